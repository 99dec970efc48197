"""URL filtering: block lists of domains and URLs, patterns, substrings and an allow-list.

FineWeb's first filter after reading (datatrove's ``URLFilter``) drops pages whose URL is on the
UT1 block list of the Université Toulouse Capitole: a directory per category (``adult``,
``gambling``, ``phishing``, ...), each with a ``domains`` file (a domain per line, meaning the
domain and every subdomain) and a ``urls`` file (a URL without its scheme and ``www.`` per line,
meaning that page and everything under it). llmfab reads that layout, and plain files of either
kind, from local paths only: nothing is downloaded.

Domains are matched the way squidGuard, the lists' consumer, means them, and with the Public
Suffix List (``tldextract``'s bundled snapshot, private suffixes included): a host matches an
entry if it is that domain or a subdomain of it, walking up from the host only as far as its
registered domain (``a.b.example.co.uk`` checks ``a.b.example.co.uk``, ``b.example.co.uk`` and
``example.co.uk``; never ``co.uk``; under a suffix the list does not know, such as ``.example``,
down to the last two labels; an IP address only as itself). So an entry that is itself a public suffix blocks nothing, and
``evil.github.io`` never blocks another ``github.io`` site. datatrove compares only the label left
of the suffix (``example``), which blocks ``example.org`` for an entry ``example.com``.

Lists are held as sorted 64-bit hashes (UT1's adult list is millions of entries: ~36 MB this way
against ~400 MB as a Python set), loaded once per worker process and shared by its batches.
Reasons: ``<category>_domain`` and ``<category>_url`` (a plain file's category is its name),
``url_pattern``, ``url_substring``; documents kept without a URL or by the allow-list are counted
as ``no_url`` and ``allow_listed``.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import tldextract

from llmfab.api.dataset import UrlFilter as UrlFilterSpec
from llmfab.data.bounded_reading import open_decompressed
from llmfab.errors import WorkloadError

NO_URL = "no_url"
ALLOW_LISTED = "allow_listed"
LIST_FILES = ("domains", "urls")


def _hash(entry: str) -> int:
    return int.from_bytes(hashlib.blake2b(entry.encode(), digest_size=8).digest(), "little")


@functools.cache
def _extractor() -> tldextract.TLDExtract:
    """The Public Suffix List from the snapshot inside the package: no URLs to fetch, no cache
    directory to write (``suffix_list_urls=()``, ``cache_dir=None``)."""
    return tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True,
                                 include_psl_private_domains=True)


def _clean_domain(entry: str) -> str:
    entry = entry.strip().lower()
    if "://" in entry:
        entry = entry.split("://", 1)[1]
    entry = entry.split("/", 1)[0].rstrip(".")
    return entry[4:] if entry.startswith("www.") else entry


def _clean_url(entry: str) -> str:
    entry = entry.strip().lower()
    if "://" in entry:
        entry = entry.split("://", 1)[1]
    entry = entry[4:] if entry.startswith("www.") else entry
    return entry.rstrip("/")


class HashedList:
    """Entries of several categories as one sorted array of hashes, with each entry's category
    (the first category listing it, in load order)."""

    def __init__(self, categories: list[tuple[str, Iterable[str]]]) -> None:
        self.names = [name for name, _ in categories]
        hashes: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        for i, (_, entries) in enumerate(categories):
            h = np.fromiter((_hash(e) for e in entries if e), dtype=np.uint64)
            hashes.append(h)
            owners.append(np.full(len(h), i, dtype=np.int32))
        h = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        o = np.concatenate(owners) if owners else np.zeros(0, np.int32)
        order = np.lexsort((o, h))
        h, o = h[order], o[order]
        first = np.ones(len(h), dtype=bool)
        first[1:] = h[1:] != h[:-1]
        self.hashes, self.owners = h[first], o[first]

    def __len__(self) -> int:
        return len(self.hashes)

    def find(self, keys: list[str]) -> str | None:
        """The category of the first of ``keys`` listed, or None."""
        if not len(self.hashes) or not keys:
            return None
        q = np.array([_hash(k) for k in keys], dtype=np.uint64)
        at = np.minimum(np.searchsorted(self.hashes, q), len(self.hashes) - 1)
        hit = np.flatnonzero(self.hashes[at] == q)
        return self.names[self.owners[at[hit[0]]]] if len(hit) else None


def _lines(path: Path) -> Iterator[str]:
    with open_decompressed(path) as f:
        for raw in f:
            line = raw.decode("utf-8", "replace").strip()
            if line and not line.startswith("#"):
                yield line


def _list_files(path: Path, categories: set[str], field: str) -> Iterator[tuple[str, str, Path]]:
    """(category, "domains" | "urls" | "mixed", file) of one ``blocklists`` entry."""
    if path.is_file():
        yield re.sub(r"[^a-z0-9]+", "_", path.name.split(".")[0].lower()) or "blocklist", "mixed", path
        return
    if not path.is_dir():
        raise WorkloadError(f"{field}: {path} does not exist; point it at a block list file or a UT1 "
                            "directory (relative paths are relative to the spec file)")
    if any((path / kind).is_file() for kind in LIST_FILES):  # one category's directory
        folders = [path]
    else:
        folders = sorted(p for p in path.iterdir() if p.is_dir() and any((p / k).is_file() for k in LIST_FILES))
    if not folders:
        raise WorkloadError(f"{field}: {path} has no UT1 lists (<category>/domains or <category>/urls); "
                            "point it at the extracted blacklists/ directory or at a list file")
    for folder in folders:
        if categories and folder.name not in categories:
            continue
        for kind in LIST_FILES:
            if (folder / kind).is_file():
                yield folder.name, kind, folder / kind


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


class UrlFilter:
    """Drop a document by its URL; keep (and count) one without a URL."""

    name = "url"

    def __init__(self, spec: UrlFilterSpec) -> None:
        """``spec.blocklists`` must be resolved already (:func:`resolved`): workers have no spec file."""
        self.spec = spec
        files: list[tuple[str, str, Path]] = []
        for i, path in enumerate(spec.blocklists):
            files += _list_files(Path(path), set(spec.categories), f"spec.filters.url.blocklists[{i}]")
        self.files = tuple((c, k, _file_key(p)) for c, k, p in files)
        self.domains, self.urls = _load_lists(self.files, tuple(spec.blocked_domains))
        self.allowed = frozenset(_clean_domain(d) for d in spec.allow_domains)
        self.pattern = re.compile("|".join(f"(?:{p})" for p in spec.patterns)) if spec.patterns else None
        self.substrings = tuple(s.lower() for s in spec.substrings if s)

    def judge_url(self, url: str | None) -> tuple[str | None, str | None]:
        """``(reason, None)`` to drop; ``(None, note)`` to keep, ``note`` being what to count."""
        if not url:
            return None, NO_URL
        hosts, paths = _candidates(url)
        if self.allowed and any(h in self.allowed for h in hosts):
            return None, ALLOW_LISTED
        category = self.domains.find(hosts)
        if category is not None:
            return f"{category}_domain", None
        category = self.urls.find(paths)
        if category is not None:
            return f"{category}_url", None
        if self.pattern is not None and self.pattern.search(url):
            return "url_pattern", None
        if self.substrings:
            lowered = url.lower()
            if any(s in lowered for s in self.substrings):
                return "url_substring", None
        return None, None


def _split_mixed(lines: Iterable[str]) -> tuple[list[str], list[str]]:
    domains: list[str] = []
    urls: list[str] = []
    for line in lines:
        cleaned = _clean_url(line)
        (urls if "/" in cleaned else domains).append(cleaned if "/" in cleaned else _clean_domain(line))
    return domains, urls


@functools.lru_cache(maxsize=2)
def _load_lists(files: tuple[tuple[str, str, tuple[str, int, int]], ...], extra_domains: tuple[str, ...]
                ) -> tuple[HashedList, HashedList]:
    """Read the lists once per process (a worker builds its steps for every batch); keyed by each
    file's path, size and modification time, so an edited list is read again."""
    domains: dict[str, list[str]] = {}
    urls: dict[str, list[str]] = {}
    for category, kind, (name, _, _) in files:
        lines = _lines(Path(name))
        if kind == "domains":
            domains.setdefault(category, []).extend(_clean_domain(x) for x in lines)
        elif kind == "urls":
            urls.setdefault(category, []).extend(_clean_url(x) for x in lines)
        else:
            d, u = _split_mixed(lines)
            domains.setdefault(category, []).extend(d)
            urls.setdefault(category, []).extend(u)
    if extra_domains:
        domains.setdefault("blocked", []).extend(_clean_domain(d) for d in extra_domains)
    return HashedList(list(domains.items())), HashedList(list(urls.items()))


def _candidates(url: str) -> tuple[list[str], list[str]]:
    """(the host and its parent domains down to the registered domain; the URL without scheme and
    ``www.`` and each of its parent paths) of ``url``."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return [], []
    bare = host[4:] if host.startswith("www.") else host
    labels = host.split(".")
    registered = _extractor()(host).top_domain_under_public_suffix
    if not registered:  # an IP address, or a suffix the list does not know (.example, .internal)
        registered = host if _is_ip(host) else ".".join(labels[-2:])
    hosts = []
    for i in range(len(labels)):
        candidate = ".".join(labels[i:])
        hosts.append(candidate)
        if candidate == registered:
            break
    path = parts.path.rstrip("/")
    pieces = [p for p in path.split("/") if p]
    paths = [f"{bare}{path}?{parts.query}".lower()] if parts.query else []
    for n in range(len(pieces), 0, -1):
        paths.append((bare + "/" + "/".join(pieces[:n])).lower())
    return hosts, paths


def resolved(spec: UrlFilterSpec, resolve: Callable[[str], Path]) -> UrlFilterSpec:
    """``spec`` with its block lists as absolute paths, for the workers."""
    return spec.model_copy(update={"blocklists": [str(resolve(p)) for p in spec.blocklists]})


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def list_sizes(spec: UrlFilterSpec) -> dict[str, int]:
    """Entries loaded, for ``stats.json``: how much the filter was checking against. Loading them
    here, in the driver, also fails a bad path before any document is read."""
    f = UrlFilter(spec)
    return {"domains": len(f.domains), "urls": len(f.urls), "patterns": len(spec.patterns),
            "substrings": len(f.substrings), "allowDomains": len(f.allowed)}


def list_identities(spec: UrlFilterSpec) -> list[str]:
    """Path, size and modification time of every list file: a resumed build must filter with the
    lists it started with (:mod:`llmfab.data.passes.checkpoint`)."""
    if not (spec.enabled and has_rules(spec)):
        return []
    return [f"{name}|{size}|{mtime}" for _, _, (name, size, mtime) in UrlFilter(spec).files]


def has_rules(spec: UrlFilterSpec) -> bool:
    return bool(spec.blocklists or spec.blocked_domains or spec.patterns or spec.substrings)

