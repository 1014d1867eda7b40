"""MovieLens-100k's public catalogue (``u.item``): titles, release dates and genres.

``u.item`` is latin-1, '|' separated, 24 fields per line (id, title, release date, video
release, IMDb url, 19 genre flags); ``u.genre`` names the flags (``name|index``). Both
are public catalogue data: no user's ratings are in them. Two uses:

- item texts for transfer-learned embeddings (:mod:`common.data.item_text`), and
- public item attributes for the on-device scorer and attribute-based item tables
  (``item-attributes = "builtin"`` for ``ml-100k``): one ``genre:<name>`` attribute per
  genre flag set and one ``released:<from>-<to>`` attribute per span of
  :data:`RELEASE_SPAN_YEARS` years (spans start at 1920; earlier films share the first).

Malformed lines raise :class:`~common.data.errors.DataFormatError` naming file and line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.data.errors import DataFormatError

ML100K_FIELDS = 24
ML100K_GENRE_COUNT = 19
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
# Release-year attribute spans; 5 years was chosen on ML-100k validation data
# (benchmarks/on_device.py, docs/results.md): genres alone, 2- and 5-year spans compared.
RELEASE_SPAN_YEARS = 5
FIRST_SPAN_YEAR = 1920


@dataclass(frozen=True)
class Movie:
    """One ``u.item`` line: original id, title, release date (``01-Jan-1995``), genres."""

    item: int
    title: str
    release: str
    genres: tuple[str, ...]  # names of the flags set, "unknown" included
    line: int  # in u.item, for messages

    @property
    def year(self) -> int | None:
        """The release year, if the date has one."""
        year = self.release[-4:]
        return int(year) if year.isdigit() else None


def read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines of a latin-1 file with their 1-based numbers."""
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    text = path.read_text(encoding="latin-1")
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_genres(path: Path) -> tuple[str, ...]:
    """Genre names by flag index from ``u.genre`` (``name|index`` lines)."""
    names: dict[int, str] = {}
    for number, line in read_lines(path):
        fields = line.split("|")
        where = f"{path}, line {number}"
        if len(fields) != 2 or not fields[0].strip():
            raise DataFormatError(f"{where}: expected 'name|index', got {line!r}")
        index = fields[1].strip()
        if not index.isdigit() or int(index) >= ML100K_GENRE_COUNT:
            raise DataFormatError(
                f"{where}: genre index must be 0..{ML100K_GENRE_COUNT - 1}, got {index!r}"
            )
        if int(index) in names:
            raise DataFormatError(f"{where}: genre index {index} appears twice")
        names[int(index)] = fields[0].strip()
    missing = sorted(set(range(ML100K_GENRE_COUNT)) - names.keys())
    if missing:
        raise DataFormatError(f"{path}: genre indices {missing} are missing")
    return tuple(names[i] for i in range(ML100K_GENRE_COUNT))


def read_movies(u_item_path: Path, genres: Sequence[str] = ML100K_GENRES) -> list[Movie]:
    """Every line of ``u.item``, validated (field count, integer and unique ids, 0/1 flags)."""
    u_item_path = Path(u_item_path)
    movies: list[Movie] = []
    seen: set[int] = set()
    for number, line in read_lines(u_item_path):
        fields = line.split("|")
        where = f"{u_item_path}, line {number}"
        if len(fields) != ML100K_FIELDS:
            raise DataFormatError(
                f"{where}: expected {ML100K_FIELDS} '|'-separated fields, got {len(fields)}"
            )
        raw_id = fields[0].strip()
        if not raw_id.isdigit():
            raise DataFormatError(f"{where}: field 'item id' must be an integer, got {raw_id!r}")
        item = int(raw_id)
        if item in seen:
            raise DataFormatError(f"{where}: item id {item} appears twice")
        seen.add(item)
        flags = [flag.strip() for flag in fields[5:]]
        for index, flag in enumerate(flags):
            if flag not in ("0", "1"):
                raise DataFormatError(
                    f"{where}: genre flag {index} ({genres[index]}) must be 0 or 1, got {flag!r}"
                )
        named = tuple(genres[i] for i, flag in enumerate(flags) if flag == "1")
        movies.append(Movie(item, fields[1].strip(), fields[2].strip(), named, number))
    if not movies:
        raise DataFormatError(f"{u_item_path}: no items found")
    return movies


def release_span(year: int) -> str:
    """``released:1995-1999`` for 1997: the span of :data:`RELEASE_SPAN_YEARS` holding it."""
    spans = max(year - FIRST_SPAN_YEAR, 0) // RELEASE_SPAN_YEARS
    start = FIRST_SPAN_YEAR + spans * RELEASE_SPAN_YEARS
    return f"released:{start}-{start + RELEASE_SPAN_YEARS - 1}"


def attribute_pairs(u_item_path: Path) -> list[tuple[str, str, str]]:
    """(item id, attribute, where) for every movie: its genres and its release span."""
    pairs: list[tuple[str, str, str]] = []
    for movie in read_movies(u_item_path):
        attributes = [f"genre:{name}" for name in movie.genres]
        if movie.year is not None:
            attributes.append(release_span(movie.year))
        where = f"line {movie.line}"
        pairs.extend((str(movie.item), attribute, where) for attribute in attributes)
    return pairs
