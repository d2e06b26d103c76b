"""Text sources for calibration and evaluation.

Embedded (no network):
- ``wiki`` / ``wiki-test``: the Wikipedia articles shipped in the gensim wheel's test data,
  markup stripped with mwparserfromhell, redirects dropped, split *by article*: articles sorted by
  title, every fifth one (index % 5 == 4) held out as ``wiki-test``; no article is in both.
- ``news``: the Lee news corpus in the same wheel (``lee_background.cor``), one text per line.
The embedded corpora are parsed once and cached as JSON under the prunekit cache.

Also: a local ``.txt`` file (one text) or ``.jsonl`` file (field ``text``), and, with the network,
the papers' sources by name: ``alpaca`` (the BlockPruner authors' recipe), ``wikitext2``, ``c4``, ``ptb``.
"""

from __future__ import annotations

import bz2
import json
import random
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import mwparserfromhell

from prunekit.core.errors import PrunekitError, suggest
from prunekit.core.io import write_json_atomic
from prunekit.core.paths import cache_dir, package_dir

EMBEDDED_SOURCES = ("wiki", "wiki-test", "news")
HUB_SOURCES = ("alpaca", "wikitext2", "c4", "ptb")
CORPUS_VERSION = 4
_MEDIA_PREFIXES = ("file:", "image:", "category:", "media:")
_IMAGE_LEFTOVER = re.compile(r"^(thumb|thumbnail|frame|frameless|left|right|upright|center|\d+px)\|")


def gensim_test_data() -> Path:
    where = package_dir("gensim")
    if where is None or not (where / "test" / "test_data").is_dir():
        raise PrunekitError(
            "the embedded corpora need the package 'gensim' (its test data).",
            "Install it with: pip install --no-deps gensim",
        )
    return where / "test" / "test_data"


def _strip_markup(wikitext: str) -> str:
    code = mwparserfromhell.parse(wikitext)
    for link in code.filter_wikilinks(recursive=True):
        if str(link.title).strip().lower().startswith(_MEDIA_PREFIXES):
            try:
                code.remove(link)
            except ValueError:
                pass
    text = code.strip_code(normalize=True, collapse=True)
    # The shortened dump cuts some pages mid-markup: drop what the parser could not close.
    text = re.sub(r"\[\[(?:file|image):[^\n]*", "", text, flags=re.IGNORECASE)
    text = re.sub(r"\[\[[^\]|\n]*\|([^\]\n]*)\]\]", r"\1", text)
    text = text.replace("[[", "").replace("]]", "").replace("{{", "").replace("}}", "")
    lines = [ln.strip() for ln in text.splitlines()
             if not _IMAGE_LEFTOVER.match(ln.strip()) and not ln.strip().startswith(("|", "!", "{|"))]
    out, blank = [], False
    for ln in lines:
        if not ln:
            blank = bool(out)
            continue
        if blank:
            out.append("")
        out.append(ln)
        blank = False
    return "\n".join(out)


def _parse_wiki_dump(path: Path) -> list[tuple[str, str]]:
    """(title, plain text) of each real article in a bz2 MediaWiki XML dump; redirects dropped."""
    articles = []
    with bz2.open(path, "rb") as f:
        title, text = None, None
        for _, elem in ET.iterparse(f, events=("end",)):
            tag = elem.tag.rsplit("}", 1)[-1]
            if tag == "title":
                title = elem.text or ""
            elif tag == "text":
                text = elem.text or ""
            elif tag == "page":
                if title and text and not text.lstrip().upper().startswith("#REDIRECT"):
                    plain = _strip_markup(text)
                    if len(plain) > 200:
                        articles.append((title, f"{title}\n\n{plain}"))
                title, text = None, None
                elem.clear()
    return articles


def _prepared_wiki() -> dict:
    cached = cache_dir() / "corpora" / f"wiki-v{CORPUS_VERSION}.json"
    if cached.exists():
        return json.loads(cached.read_text(encoding="utf-8"))
    dumps = sorted(gensim_test_data().glob("enwiki-latest-pages-articles1.xml-*-shortened.bz2"))
    articles = sorted({t: x for d in dumps for t, x in _parse_wiki_dump(d)}.items())
    calib = [(t, x) for i, (t, x) in enumerate(articles) if i % 5 != 4]
    test = [(t, x) for i, (t, x) in enumerate(articles) if i % 5 == 4]
    data = {
        "calib_titles": [t for t, _ in calib], "calib": [x for _, x in calib],
        "test_titles": [t for t, _ in test], "test": [x for _, x in test],
    }
    write_json_atomic(cached, data)
    return data


def _news() -> list[str]:
    path = gensim_test_data() / "lee_background.cor"
    return [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]


def read_local(path: Path) -> list[str]:
    """Texts of a local .txt (one text) or .jsonl (field ``text``) file, refusing unusable files."""
    if not path.is_file():
        raise PrunekitError(f"calibration file '{path}' does not exist or is not a file.", "Check the path given to `calib`/`data`.")
    raw = path.read_bytes()
    if b"\x00" in raw[:4096]:
        raise PrunekitError(f"'{path}' looks binary (NUL bytes), not text.", "Give a UTF-8 .txt or .jsonl file.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PrunekitError(f"'{path}' is not UTF-8 text (byte {e.start}).", "Convert it to UTF-8 (e.g. iconv -t utf-8).") from None
    if not text.strip():
        raise PrunekitError(f"'{path}' is empty.", "Give a file with text in it.")
    if path.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                texts.append(str(row["text"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise PrunekitError(f"'{path}' line {n} is not a JSON object with a 'text' field.",
                                    "Fix that line or use a .txt file.") from None
        return texts
    return [text]


def authors_pick(n: int, rows: int) -> list[int]:
    """The BlockPruner authors' row sample: ``transformers.set_seed(42)`` then ``random.sample(range(n), rows)``.

    Drawn from a private generator seeded the same way (``set_seed`` seeds the module-level
    ``random`` with 42), so the rows are theirs and the caller's random state is left alone.
    """
    return random.Random(42).sample(range(n), min(rows, n))


def _hub_texts(name: str, rows: int, seed: int) -> list[str]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - a declared dependency
        raise PrunekitError("the 'datasets' package is needed for hub sources.", "pip install datasets") from None
    try:
        if name == "alpaca":
            # The BlockPruner authors' recipe: 80/20 split, the 20% split 50/50, its first half used.
            ds = datasets.load_dataset("tatsu-lab/alpaca", split="train")
            held = ds.train_test_split(test_size=0.2, seed=42)["test"].train_test_split(test_size=0.5, seed=42)["train"]
            return [held[i]["text"] for i in authors_pick(len(held), rows)]
        if name == "wikitext2":
            return ["\n\n".join(datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"])]
        if name == "ptb":
            return ["\n\n".join(datasets.load_dataset("ptb_text_only", "penn_treebank", split="test")["sentence"])]
        if name == "c4":
            ds = datasets.load_dataset(
                "allenai/c4", data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"}, split="validation"
            )
            return ds.select(range(min(rows, len(ds))))["text"]
    except (OSError, ConnectionError, ValueError) as e:
        raise PrunekitError(
            f"could not fetch the '{name}' dataset from the hub ({str(e).splitlines()[0][:160]}).",
            f"Check the network, or use an embedded source ({', '.join(EMBEDDED_SOURCES)}) or a local .txt/.jsonl file.",
        ) from None
    raise AssertionError(name)


def load_texts(source: str, rows: int = 256, seed: int = 42) -> list[str]:
    """The texts of a source name or local file path (see the module docstring)."""
    if source == "wiki":
        return _prepared_wiki()["calib"]
    if source == "wiki-test":
        return _prepared_wiki()["test"]
    if source == "news":
        return _news()
    if source in HUB_SOURCES:
        return _hub_texts(source, rows, seed)
    path = Path(source).expanduser()
    if path.suffix in (".txt", ".jsonl") or path.exists():
        return read_local(path)

    names = EMBEDDED_SOURCES + HUB_SOURCES
    raise PrunekitError(
        f"data source '{source}' is not known.{suggest(source, names)}",
        f"Use one of: {', '.join(names)}, or a path to a .txt or .jsonl file.",
    )


def wiki_split_titles() -> tuple[list[str], list[str]]:
    """(calibration titles, held-out titles) of the embedded Wikipedia split."""
    d = _prepared_wiki()
    return d["calib_titles"], d["test_titles"]
