"""Calibration / evaluation text: the embedded split, windows, and refused inputs."""

from __future__ import annotations

import random

import pytest

from prunekit.core.errors import PrunekitError
from prunekit.data import build_windows, load_texts, wiki_split_titles, windows_from_texts
from prunekit.data.corpora import authors_pick
from prunekit.models.tiny import tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_wiki_split_has_no_article_in_both():
    calib, test = wiki_split_titles()
    assert len(calib) > 50 and len(test) > 10
    assert not set(calib) & set(test)
    calib_texts, test_texts = load_texts("wiki"), load_texts("wiki-test")
    assert len(calib_texts) == len(calib) and len(test_texts) == len(test)
    assert not set(calib_texts) & set(test_texts)
    assert all("#REDIRECT" not in t[:50].upper() for t in calib_texts + test_texts)
    assert all("[[" not in t and "{{" not in t for t in test_texts)  # markup stripped


def test_news_corpus_loads():
    news = load_texts("news")
    assert len(news) > 250 and all(t.strip() for t in news)


def test_windows_are_consecutive_slices(tok):
    texts = ["alpha beta gamma " * 50, "delta epsilon " * 40]
    w = windows_from_texts(tok, texts, seq_len=16, n_windows=3)
    ids = tok("\n\n".join(texts))["input_ids"]
    assert w.ids.shape == (3, 16)
    assert w.ids.flatten().tolist() == ids[:48]
    all_w = windows_from_texts(tok, texts, seq_len=16)
    assert all_w.n_windows == len(ids) // 16


def test_random_windows_are_seeded(tok):
    texts = ["some words here and there " * 80]
    a = windows_from_texts(tok, texts, 8, 4, sample="random", seed=3)
    b = windows_from_texts(tok, texts, 8, 4, sample="random", seed=3)
    c = windows_from_texts(tok, texts, 8, 4, sample="random", seed=4)
    assert a.ids.equal(b.ids) and not a.ids.equal(c.ids)
    assert a.fingerprint() == b.fingerprint()


def test_fingerprint_names_text_and_recipe(tok):
    w = windows_from_texts(tok, ["x y z " * 40], 8, 2, source="mine")
    fp = w.fingerprint()
    assert fp["source"] == "mine" and fp["seq_len"] == 8 and fp["windows"] == 2 and len(fp["text_sha256"]) == 64


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(seq_len=4096, max_positions=256), "above the model's context"),
        (dict(seq_len=16, n_windows=0), "asks for no windows"),
        (dict(seq_len=10_000), "too short for one window"),
        (dict(seq_len=16, n_windows=10_000), "gives only"),
    ],
)
def test_bad_window_requests(tok, kwargs, match):
    with pytest.raises(PrunekitError, match=match):
        windows_from_texts(tok, ["a short text " * 30], **kwargs)


def test_bad_files(tok, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 ".encode("latin-1") * 50)
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    badjson = tmp_path / "rows.jsonl"
    badjson.write_text('{"text": "fine"}\n{"nope": 1}\n')
    for path, match in [(empty, "is empty"), (latin, "not UTF-8"), (binary, "looks binary"), (badjson, "line 2")]:
        with pytest.raises(PrunekitError, match=match):
            build_windows(tok, str(path), 8)
    with pytest.raises(PrunekitError, match="does not exist"):
        build_windows(tok, str(tmp_path / "missing.txt"), 8)
    with pytest.raises(PrunekitError, match="not known. Did you mean 'wiki-test'"):
        build_windows(tok, "wiki-tst", 8)


def test_jsonl_rows(tok, tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"text": "first row text"}\n\n{"text": "second row"}\n')
    assert load_texts(str(f)) == ["first row text", "second row"]


def test_alpaca_rows_are_the_authors_and_leave_the_global_random_state_alone():
    random.seed(42)
    theirs = random.sample(range(5000), 64)  # the authors: transformers.set_seed(42), then random.sample
    random.seed(7)
    state = random.getstate()
    assert authors_pick(5000, 64) == theirs
    assert random.getstate() == state
    assert sorted(authors_pick(10, 64)) == list(range(10))  # fewer rows than asked: all of them
