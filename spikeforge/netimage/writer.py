"""Writing a network image: validate, then the manifest and one int64 ``.npy`` per array, in a deflated ZIP.
Whatever ``save`` writes, the reader (.reader) reads back unchanged.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from .model import FORMAT_NAME, FORMAT_VERSION, Network, NetworkFileError, validate
from .reader import decode_manifest

__all__ = ["save"]


def _array_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.int64), allow_pickle=False)
    return buf.getvalue()


def save(net: Network, path: str | Path) -> Path:
    """Validate and write a network image; whatever this writes, ``load`` reads back unchanged."""
    path = Path(path)
    validate(net, str(path))
    arrays: dict[str, np.ndarray] = {}
    manifest_pops = []
    for pop in net.populations:
        entry: dict = {"name": pop.name, "kind": pop.kind, "shape": [int(d) for d in pop.shape]}
        if pop.kind == "input":
            entry["bits"] = int(pop.bits)
        else:
            entry.update(vbits=int(pop.vbits), acc_bits=int(pop.acc_bits),
                         leak_shift=None if pop.leak_shift is None else int(pop.leak_shift))
            arrays[f"{pop.name}.bias"] = pop.bias
            entry["bias"] = f"{pop.name}.bias"
            if pop.threshold is not None:
                arrays[f"{pop.name}.threshold"] = pop.threshold
                entry["threshold"] = f"{pop.name}.threshold"
            entry["projections"] = []
            for k, proj in enumerate(pop.projections):
                key = f"{pop.name}.p{k}.weight"
                arrays[key] = proj.weight
                pe = {"source": net.populations[proj.source].name, "kind": proj.kind, "wbits": int(proj.wbits),
                      "weight": key}
                if proj.kind == "conv2d":
                    pe.update(stride=[int(s) for s in proj.stride], padding=[int(p) for p in proj.padding])
                entry["projections"].append(pe)
        manifest_pops.append(entry)
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "time_steps": int(net.time_steps),
                "metadata": net.metadata, "populations": manifest_pops}
    try:
        text = json.dumps(manifest, indent=1, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise NetworkFileError(f"{path}: metadata cannot be written as JSON ({exc}); keep it to dicts, lists, "
                               "strings, finite numbers, booleans and None") from None
    decode_manifest(text.encode(), str(path))  # the reader's JSON rules: size, nesting depth
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", text)
        for key, array in arrays.items():
            zf.writestr(f"arrays/{key}.npy", _array_bytes(array))
    return path
