"""One HTTP transfer of a released checkpoint into a `.part` file: resumable and checked.

Plain urllib, for every host the cards name: GitHub release assets, a Google-Drive file
(its "can't scan this file for viruses" confirm page is read and followed), a mirror,
or a `file://` folder. The bytes go to `<final>.part` and stay there when the network
drops, so the next try asks for the rest with an HTTP Range request instead of starting
over; `fan/hub.py` renames a finished `.part` into the cache (`stl_bench/io.py`), so a
cached name is always a whole file. Every way a server can hand over the wrong thing
(an error status, an HTML page, a body shorter or longer than it announced) is an
`StlBenchError` naming the URL, and leaves no partial file behind, except the resumable
`.part` of a transfer cut off by the network.
"""
from __future__ import annotations

import contextlib
import http.client
import logging
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import IO, Iterator

from stl_bench.errors import StlBenchError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MAX_ATTEMPTS = 5  # tries of one transfer; each resumes where the last stopped
TIMEOUT_S = 60
MAX_PAGE = 1 << 20  # an HTML answer is read this far, to find a confirm form or an error line
# How checkpoints begin: a zip (torch.save since 1.6), a pickle (older torch.save), safetensors' header.
_MAGIC = (b"PK\x03\x04", b"\x80")
_DRIVE_FILE = re.compile(r"^/file/d/([A-Za-z0-9_-]+)")


class _Unsatisfiable(Exception):
    """HTTP 416: the server has no bytes past our offset."""


class _KeptPart(StlBenchError):
    """A download error after which the `.part` file is worth keeping (the transfer can resume)."""


def part_path(final: Path) -> Path:
    return final.with_name(final.name + ".part")


def direct_url(url: str) -> str:
    """A Drive "view" link as its download link; any other URL unchanged."""
    parts = urllib.parse.urlsplit(url)
    match = _DRIVE_FILE.match(parts.path)
    if parts.hostname == "drive.google.com" and match:
        return f"https://drive.google.com/uc?export=download&id={match.group(1)}"
    return url


class _ConfirmForm(HTMLParser):
    """Drive's confirm page: `<form id="download-form" action=...>` with hidden inputs, or an error line."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self.in_form = False
        self.link: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and a.get("id") == "download-form":
            self.action, self.in_form = a.get("action", ""), True
        elif tag == "input" and self.in_form and a.get("type") == "hidden" and a.get("name"):
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "a" and a.get("href", "").startswith("/uc?export=download"):
            self.link = a["href"]  # the older page: a plain "Download anyway" link

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.in_form = False


def confirm_url(page: str, page_url: str) -> str | None:
    """The download link on a Drive confirm page, or None when `page` is no such page.

    With the `[weights]` extra, gdown's parser reads the page (it follows Google's
    changes to it); without, the form of today's page is read here.
    """
    try:
        from gdown.download import get_url_from_gdrive_confirmation
    except ImportError:
        form = _ConfirmForm()
        form.feed(page)
        if form.action:
            query = urllib.parse.urlencode(form.fields)
            return urllib.parse.urljoin(page_url, form.action) + ("&" if "?" in form.action else "?") + query
        return urllib.parse.urljoin(page_url, form.link) if form.link else None
    try:
        return urllib.parse.urljoin(page_url, get_url_from_gdrive_confirmation(page))
    except Exception:  # gdown raises its own error type when the page has no link
        return None


def _html_reason(page: str) -> str:
    """A line of an HTML page that says what it is (Drive's error subcaption, else the title)."""
    for pattern in (r'<p class="uc-error-subcaption">(.*?)</p>', r"<title>(.*?)</title>"):
        match = re.search(pattern, page, re.S | re.I)
        if match and match.group(1).strip():
            return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", match.group(1))).strip()[:120]
    return "no checkpoint in it"


def _request(url: str, offset: int) -> http.client.HTTPResponse:
    req = urllib.request.Request(url, headers={"User-Agent": "stl-bench"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(req, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416:
            raise _Unsatisfiable() from None
        raise StlBenchError(f"{url} answered HTTP {err.code} {err.reason}; check the card's url, or that the "
                            "mirror holds <mirror>/<card name>/<file name>") from None
    except urllib.error.URLError as err:
        reason = getattr(err.reason, "strerror", None) or err.reason
        if url.startswith("file:"):
            raise StlBenchError(f"{url}: {reason}; a mirror folder holds <mirror>/<card name>/<file name>") from None
        raise ConnectionError(f"cannot reach {url} ({reason})") from None
    except OSError as err:  # a timeout or reset before the answer's headers
        raise ConnectionError(f"cannot reach {url} ({err.strerror or err})") from None


def open_transfer(url: str, offset: int) -> http.client.HTTPResponse:
    """The response that carries the file from `offset`, past a Drive confirm page if there is one."""
    for _ in range(3):
        resp = _request(url, offset)
        if resp.headers.get_content_type() != "text/html":
            return resp
        with resp:
            page = resp.read(MAX_PAGE).decode("utf-8", errors="replace")
        nxt = confirm_url(page, url)
        if not nxt:
            raise StlBenchError(f"{url} returned an HTML page ({_html_reason(page)}), not a checkpoint; the link may "
                                "need a sign-in or have moved: download the file in a browser and pass its path")
        log.info("following the download confirm page of %s", url)
        url = nxt
    raise StlBenchError(f"{url} kept answering with confirm pages; download the file in a browser and pass its path")


def _span(resp: http.client.HTTPResponse, offset: int, url: str) -> tuple[int, int | None]:
    """(first byte of this body, size of the whole file or None) from a 200 or 206 answer."""
    length = resp.headers.get("Content-Length")
    if getattr(resp, "status", 200) != 206:
        return 0, int(length) if length is not None else None
    match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
    if not match or int(match.group(1)) != offset:
        raise StlBenchError(f"{url} answered a range request with Content-Range "
                            f"'{resp.headers.get('Content-Range')}', not bytes {offset}-; delete its .part file and retry")
    start, end, total = int(match.group(1)), int(match.group(2)), match.group(3)
    if length is not None and int(length) != end - start + 1:
        raise StlBenchError(f"{url} sent Content-Length {length} for bytes {start}-{end} (Content-Length mismatch); "
                            "the server or a proxy is broken: try again later or use a mirror")
    return start, None if total == "*" else int(total)


def _check_magic(head: bytes, url: str) -> None:
    if head.startswith(_MAGIC) or (len(head) > 8 and head[8:9] == b"{"):  # safetensors: u64 length, then JSON
        return
    what = "an HTML page" if head.lstrip()[:1] == b"<" else f"data that starts with {head[:8]!r}"
    raise StlBenchError(f"{url} sent {what}, not a PyTorch checkpoint; check the card's url or the mirror's file")


def _copy_body(resp: IO[bytes], fh: IO[bytes], start: int, total: int | None, url: str, bar) -> None:
    """Append the body to `fh`; a body that runs past the announced size is refused."""
    first = start == 0
    while True:
        chunk = resp.read(CHUNK)
        if not chunk:
            return
        if first:
            _check_magic(chunk, url)
            first = False
        if total is not None and fh.tell() + len(chunk) > total:
            raise StlBenchError(f"{url} sent more than the {total} bytes it announced (Content-Length mismatch); "
                                "the file on the server changed or a proxy is broken")
        fh.write(chunk)
        bar.update(len(chunk))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[IO[bytes]]:
    """`path` opened for appending, held exclusively: two processes never write one `.part`."""
    with open(path, "ab") as fh:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock; concurrent downloads of one file are on the user
            yield fh
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield fh
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _progress_bar(total: int | None, initial: int, name: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                disable=not enabled, file=sys.stderr, leave=False)


def _one_attempt(url: str, fh: IO[bytes], name: str, progress: bool) -> tuple[int | None, bool]:
    """Fetch from the `.part`'s end; returns (the file's size if known, whether the server resumes)."""
    offset = fh.tell()
    resp = open_transfer(url, offset)
    with resp:
        start, total = _span(resp, offset, url)
        resumable = start > 0 or resp.headers.get("Accept-Ranges", "").lower() == "bytes"
        if start == 0 and offset:  # the server ignored the range: start over
            log.info("%s does not resume transfers; downloading %s from the start", url, name)
            fh.seek(0)
            fh.truncate()
        with _progress_bar(total, fh.tell(), name, progress) as bar:
            try:
                _copy_body(resp, fh, start, total, url, bar)
            except (OSError, http.client.HTTPException) as exc:
                log.warning("transfer of %s stopped at %d bytes (%s)", name, fh.tell(), exc)
            finally:
                fh.flush()
    return total, resumable


def download(url: str, final: Path, progress: bool = False) -> Path:
    """Fetch `url` into `final`'s `.part` file, resuming what an earlier run left; returns the `.part`
    (or `final` itself when another process landed it meanwhile).

    Retries while tries make progress. On failure the partial bytes are dropped, except
    when the network failed (not the server's answer) or the server can resume: then
    the next run asks for the rest.
    """
    part = part_path(final)
    keep = False
    try:
        with _locked(part) as fh:
            if final.exists():  # another process finished it while this one waited for the lock
                return final
            _fetch_into(url, fh, final.name, progress)
        keep = True
        return part
    except _KeptPart:
        keep = True
        raise
    finally:
        if not keep:
            part.unlink(missing_ok=True)


def _fetch_into(url: str, fh: IO[bytes], name: str, progress: bool) -> None:
    """The retry loop of `download`: returns when the file is whole; `_KeptPart` says the bytes can resume."""
    fh.seek(0, 2)
    total, resumable, stalled = None, False, 0
    for attempt in range(MAX_ATTEMPTS):
        if total is not None and fh.tell() > total:
            log.warning("the partial %s holds more bytes than %s has; downloading it again", name, url)
            fh.seek(0)
            fh.truncate()
        before = fh.tell()
        try:
            total, resumable = _one_attempt(url, fh, name, progress)
        except _Unsatisfiable:
            if total is None:  # a partial file from an earlier, longer version of the file: start over
                log.warning("%s has no bytes past the partial %s; downloading it again", url, name)
                fh.seek(0)
                fh.truncate()
                continue
            raise StlBenchError(f"{url} has no bytes past {before}, though it announced {name} as {total} bytes "
                                "(Content-Length mismatch); try again later or use a mirror") from None
        except ConnectionError as exc:  # the network, not the file: bytes already here stay for the next run
            if fh.tell():
                raise _KeptPart(f"{exc}; run the same command again to resume {name}") from None
            raise StlBenchError(f"{exc}; check the network, or set STL_BENCH_WEIGHTS_MIRROR to a mirror") from None
        if fh.tell() and (total is None or fh.tell() == total):
            return
        if fh.tell() == 0:
            raise StlBenchError(f"{url} sent an empty body, not a checkpoint; check the card's url or the mirror")
        stalled = 0 if fh.tell() > before else stalled + 1
        if stalled >= 2:
            break
        time.sleep(min(0.2 * (attempt + 1), 2.0))
    message = f"the download of {name} from {url} stopped at {fh.tell()} of {total} bytes"
    if resumable:
        raise _KeptPart(message + "; run the same command again to resume it")
    raise StlBenchError(message + " and the server cannot resume; try again later or use a mirror")
