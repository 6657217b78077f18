"""An analysed model on disk: one folder with a versioned JSON manifest, JSON artefacts and safetensors.

Every pipeline step is cached under a key computed from its inputs (settings, model checksum, the keys
of the steps it depends on): ``Bundle.step(name, inputs, compute)`` recomputes only when that key
changed. Writes are atomic (temp file + rename) and the manifest is written last, so a killed build
leaves a bundle that resumes. Checksums are verified on load; a bundle from another format version,
another model, another image size than the data's, or with a corrupted or missing file is refused with a
clear message.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from . import __version__
from .artifacts import JSON, MANIFEST, SAFETENSORS, parse_score_key, scores_file, scores_method
from .config import CONFIG_FILE, config_from_json, default_config, validate_config
from .data.core import DEFAULT_IMAGE_SIZE
from .errors import SinfError
from .io import state_dict_sha256  # noqa: F401  (re-exported)
from .io import atomic_write, sha256_file, write_json

FORMAT = "sinf-bundle"
FORMAT_VERSION = 1
INPUT_SHAPE = "input_shape"  # manifest info: (C, H, W) of the images the bundle was built on

Artefacts = dict[str, Any]  # file name -> bytes (stored as is), JSON-able object (".json") or dict[str, Tensor] (".safetensors")


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()




@dataclass
class Bundle:
    root: Path
    manifest: dict

    # ---------------------------------------------------------------- open / create
    @classmethod
    def open(cls, root: str | Path, model: str | None = None, verify: bool = True,
             input_shape: tuple[int, ...] | None = None) -> "Bundle":
        """Open an existing bundle; refuse another format version, another model, another image size
        than ``input_shape`` (C, H, W of the data it is used with), or damaged files.
        ``model`` as typed: a spec without its class count (``torchvision:resnet18``) matches the
        bundle's canonical one (``torchvision:resnet18@10``)."""
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise SinfError(f"no SINF bundle at {root} (missing {MANIFEST}); build one with `sinf build MODEL`")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise SinfError(f"bundle manifest {path} is corrupted ({exc}); rebuild with `sinf build`") from exc
        if manifest.get("format") != FORMAT:
            raise SinfError(f"{path} is not a SINF bundle manifest")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise SinfError(
                f"bundle {root} has format version {manifest.get('format_version')} (written by sinf "
                f"{manifest.get('sinf_version')}); this sinf {__version__} reads version {FORMAT_VERSION}. "
                "Rebuild it with `sinf build`."
            )
        from .models.specs import same_model

        if model is not None and not same_model(model, str(manifest.get("model"))):
            raise SinfError(f"bundle {root} is for model {manifest.get('model')!r}, not {model!r}")
        bundle = cls(root, manifest)
        if input_shape is not None:
            bundle.check_input_shape(input_shape)
        if verify:
            bundle.verify()
        return bundle

    @classmethod
    def open_or_create(cls, root: str | Path, model: str, model_sha256: str, info: dict | None = None,
                       input_shape: tuple[int, ...] | None = None) -> "Bundle":
        """Open the bundle at ``root`` for this model + weights, or start a new one there (recording
        ``input_shape``, the C, H, W of its data, in its info).

        An existing bundle of another model, of other weights or of another image size is refused rather
        than overwritten."""
        from .models.specs import same_model

        root = Path(root)
        if (root / MANIFEST).is_file():
            b = cls.open(root, verify=False)
            if not same_model(model, str(b.manifest.get("model"))):  # e.g. one spec for another class count
                raise SinfError(f"bundle {root} is for model {b.manifest.get('model')!r}, not {model!r}; choose "
                                "another --out folder or delete it")
            if b.manifest.get("model_sha256") != model_sha256:
                raise SinfError(
                    f"bundle {root} was built from different weights of {model}; choose another --out folder "
                    "or delete it"
                )
            if input_shape is not None:
                b.check_input_shape(input_shape)
            b.verify(drop_damaged=True)
            return b
        info = dict(info or {})
        if input_shape is not None:
            info[INPUT_SHAPE] = [int(v) for v in input_shape]
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "sinf_version": __version__,
            "model": model, "model_sha256": model_sha256, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "info": info, "steps": {},
        }
        b = cls(root, manifest)
        b._write_manifest()
        return b

    # ---------------------------------------------------------------- the data it was built on
    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of the images it was built on, as its info records it; a bundle that records none was
        written before sizes were recorded, when every bundle was built at the default size."""
        shape = (self.manifest.get("info") or {}).get(INPUT_SHAPE)
        return tuple(int(v) for v in shape) if shape else (3, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)

    def check_input_shape(self, input_shape: tuple[int, ...], advice: str = "") -> None:
        """Refuse data of another image size than the bundle was built on (its statistics, scores, heads and
        benchmark are of that size)."""
        built, given = self.input_shape, tuple(int(v) for v in input_shape)
        if built == given:
            return
        advice = advice or (f"; pass --image-size {built[-1]} (the size it was built at), or build a bundle for "
                            f"{_size(given)} images into another --out folder")
        raise SinfError(f"bundle {self.root} was built on {_size(built)} images, but the data is {_size(given)}"
                        + advice)

    # ---------------------------------------------------------------- integrity
    def verify(self, drop_damaged: bool = False) -> list[str]:
        """Check every recorded file's checksum. Damaged steps raise, or are dropped (to be recomputed)."""
        damaged = []
        for name, step in list(self.manifest["steps"].items()):
            for fname, digest in step["files"].items():
                p = self.root / fname
                if not p.is_file() or sha256_file(p) != digest:
                    damaged.append(f"{name}: {fname}")
                    if drop_damaged:
                        self.manifest["steps"].pop(name, None)
                    break
        if damaged and not drop_damaged:
            raise SinfError(
                f"bundle {self.root} is partial or corrupted ({'; '.join(damaged)}); run `sinf build` again to "
                "recompute the damaged steps"
            )
        if damaged:
            self._write_manifest()
        return damaged

    # ---------------------------------------------------------------- steps
    def has(self, name: str) -> bool:
        return name in self.manifest["steps"]

    def step_key(self, name: str) -> str | None:
        s = self.manifest["steps"].get(name)
        return s["key"] if s else None

    def step(self, name: str, inputs: dict, compute: Callable[[], Artefacts]) -> tuple[str, bool]:
        """Run ``compute`` unless step ``name`` is cached with the same inputs. Returns (key, recomputed)."""
        key = sha256_json({"step": name, "inputs": inputs, "model_sha256": self.manifest["model_sha256"]})
        if self.step_key(name) == key:
            return key, False
        t0 = time.perf_counter()
        artefacts = self._checked(compute())  # before any file is written
        files = {fname: self._write_artefact(fname, obj) for fname, obj in artefacts.items()}
        stale = set(self.manifest["steps"].get(name, {}).get("files", {})) - set(files)
        self.manifest["steps"][name] = {
            "key": key, "inputs": inputs, "files": files, "seconds": round(time.perf_counter() - t0, 2),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self._write_manifest()
        owned = {f for step in self.manifest["steps"].values() for f in step["files"]}
        for fname in stale - owned:  # the step's earlier files it no longer writes: gone, not left to be read
            (self.root / fname).unlink(missing_ok=True)
        return key, True

    def files_of(self, name: str) -> list[str]:
        if not self.has(name):
            raise SinfError(f"bundle {self.root} has no step {name!r}; run `sinf build {self.manifest['model']}`")
        return list(self.manifest["steps"][name]["files"])

    def json(self, fname: str) -> Any:
        p = self.root / fname
        if not p.is_file():
            raise SinfError(f"bundle {self.root} is missing {fname}; run `sinf build {self.manifest['model']}`")
        return json.loads(p.read_text())

    def tensors(self, fname: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        p = self.root / fname
        if not p.is_file():
            raise SinfError(f"bundle {self.root} is missing {fname}; run `sinf build {self.manifest['model']}`")
        return load_file(str(p))

    def put(self, name: str, artefacts: Artefacts, inputs: dict | None = None) -> None:
        """Store artefacts under a step unconditionally (e.g. the app saving a user's configuration).

        A ``config.json`` is validated first (``sinf_core.config.validate_config``) and stored clean, with
        the defaults filled in; a bad one raises ``SinfError`` and nothing is written."""
        self.step(name, {**(inputs or {}), "_put": time.time()}, lambda: artefacts)

    def config(self) -> dict:
        """The saved pruning configuration, validated (the defaults when none is saved)."""
        return read_config(self)

    # ---------------------------------------------------------------- internals
    def _checked(self, artefacts: Artefacts) -> Artefacts:
        """Artefacts with a ``config.json`` (object or JSON bytes) replaced by its validated form."""
        if CONFIG_FILE not in artefacts:
            return artefacts
        obj, where = artefacts[CONFIG_FILE], str(self.root / CONFIG_FILE)
        clean = config_from_json(obj, where) if isinstance(obj, (bytes, str)) else validate_config(obj, where)
        return {**artefacts, CONFIG_FILE: clean}

    def _write_artefact(self, fname: str, obj: Any) -> str:
        path = self.root / fname
        if isinstance(obj, bytes):  # a file written by another component, stored as is
            atomic_write(path, lambda p: p.write_bytes(obj))
        elif fname.endswith(JSON):
            write_json(path, obj)
        elif fname.endswith(SAFETENSORS):
            from safetensors.torch import save_file

            tensors = {k: v.detach().cpu().contiguous() for k, v in obj.items()}
            atomic_write(path, lambda p: save_file(tensors, str(p)))
        else:
            raise SinfError(f"bundle artefact {fname!r} must end in .json or .safetensors")
        return sha256_file(path)

    def _write_manifest(self) -> None:
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json(self.root / MANIFEST, self.manifest)


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[-2]}x{shape[-1]}" + ("" if len(shape) < 3 or shape[0] == 3 else f" ({shape[0]}-channel)")


# ---------------------------------------------------------------- artefacts with a format of their own
def read_config(bundle: "Bundle | str | Path") -> dict[str, Any]:
    """The configuration saved in ``bundle`` (a ``Bundle`` or its folder), validated; the defaults when
    the bundle has none. A hand-edited file with a wrong value raises ``SinfError`` naming the file."""
    if isinstance(bundle, (str, Path)):
        bundle = Bundle.open(bundle)
    path = Path(bundle.root) / CONFIG_FILE
    recorded = any(CONFIG_FILE in step.get("files", {}) for step in bundle.manifest.get("steps", {}).values())
    if not recorded or not path.is_file():
        return default_config()
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise SinfError(f"cannot read {path}: {exc}") from exc
    return config_from_json(text, str(path))


def score_methods(bundle: Bundle) -> set[str]:
    """The filter scores a bundle holds (its ``scores_<method>.safetensors`` files)."""
    if not bundle.has("scores"):
        return set()
    return {m for m in map(scores_method, bundle.files_of("scores")) if m}


def load_scores(bundle: Bundle, method: str) -> dict[int, dict[str, torch.Tensor]]:
    """{cluster: {layer: Tensor[C]}} of one score method from a bundle."""
    fname = scores_file(method)
    if fname not in bundle.files_of("scores"):
        raise SinfError(f"bundle {bundle.root} has no scores for {method!r}")
    out: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in bundle.tensors(fname).items():
        try:
            c, layer = parse_score_key(key)
        except ValueError as exc:
            raise SinfError(f"bundle {bundle.root}: {fname} holds {exc}; rebuild its scores step") from None
        if not isinstance(c, int):
            raise SinfError(f"bundle {bundle.root}: {fname} holds scores of no cluster index ({key!r}); rebuild its scores step")
        out.setdefault(c, {})[layer] = v
    return out
