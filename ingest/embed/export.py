"""The ONNX export: the model exported, quantized to int8 and checked, once, in a child process.

Why a child process: the export needs torch, sentence-transformers and the
fp32 model, which must never enter the caller's memory (the MCP server stays
small), and nothing the exporters print may reach an MCP stdio stream. So the
parent (`ensure_export`) runs `python -c "...export_main(...)"` with stdin
closed and stdout captured, and the child (`export_main`) exports with
`torch.onnx`, quantizes dynamically to int8 (per channel, MatMul only), checks
the result against sentence-transformers on probe sentences, and writes
`meta.json` last: its presence marks a complete, checked export.

The export is written to a temporary folder and renamed into its place under
the cache folder (`onnx_backend.onnx_cache_path`, keyed by model id and
recipe), so a half-written export is never seen. A model that does not export
well fails deterministically for a given recipe: the parent remembers it in a
`.failed.json` beside the folder, so every start does not pay for it again.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import ModelUnavailable
from .onnx_backend import META_FILE, ONNX_FILE, RECIPE, OnnxEncoder, OnnxUnavailable, onnx_cache_path
from .resolve import ModelSpec
from .torch_backend import load_sentence_transformer

__all__ = ["ensure_export", "export_main"]

logger = logging.getLogger(__name__)

# The child's exit codes, so the parent can tell "no such model" (raise)
# from "this model does not export well" (fall back to torch, remember it).
_EXIT_MODEL_UNAVAILABLE = 10
_EXIT_UNSUPPORTED = 11
_EXPORT_TIMEOUT_S = 900
# Thresholds for accepting an export, on the probe sentences below.
_MIN_MEAN_COSINE = 0.98
_MIN_COSINE = 0.95

_PROBES = (
    "How do I fix a failing migration in the SQLite schema?",
    "The test suite passes locally but fails in CI with a timeout.",
    "Refactor the parser so that it is pure and has no file access.",
    "git rebase -i HEAD~3 and squash the fixup commits",
    "def add(a: int, b: int) -> int:\n    return a + b",
    "Traceback (most recent call last): KeyError: 'session_id'",
    "The weather in Paris is lovely in the spring.",
    "Ich habe den Fehler in der Konfiguration gefunden.",
    "修复数据库连接的错误",
    "ok",
    "",
    "Summarise the conversation so far and list the open questions. " * 30,
)


def ensure_export(
    spec: ModelSpec, cache_dir: Path, threads: int, local_files_only: bool, retry_failed: bool
) -> Path:
    """The folder of a complete export of `spec` under `cache_dir`, exported first if missing.

    An export that failed before is not tried again unless `retry_failed`.
    Raises OnnxUnavailable if the export fails or failed before, ModelUnavailable
    if the model itself cannot be loaded.
    """
    folder = onnx_cache_path(cache_dir, spec)
    if not (folder / META_FILE).is_file():
        failed = folder.with_name(folder.name + ".failed.json")
        if failed.is_file() and not retry_failed:
            raise OnnxUnavailable(f"an earlier export failed (see {failed})")
        _export(spec, folder, failed, threads, local_files_only)
    return folder


def _export(
    spec: ModelSpec, folder: Path, failed: Path, threads: int, local_files_only: bool
) -> None:
    """Export in a child process into a temporary folder, then rename it in place.

    The rename makes a half-written export invisible; if two processes export
    at once, the second rename fails and its copy is dropped.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.parent))
    request = {
        "source": spec.source,
        "model_id": spec.model_id,
        "out": str(work),
        "threads": threads,
        "local_files_only": local_files_only,
    }
    # The folder holding the `ingest` package (this file is ingest/embed/export.py),
    # so the child imports this very code even when it is not installed.
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    code = f"import sys; from {__name__} import export_main; sys.exit(export_main(sys.argv[1]))"
    command = [sys.executable, "-c", code, json.dumps(request)]
    logger.info("exporting %s to ONNX int8 in %s (once per model)", spec.model_id, folder)
    started = time.perf_counter()
    try:
        # stdin closed: the child must never read the MCP stream; stdout
        # captured: it must never write to it.
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            env=env,
            timeout=_EXPORT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise OnnxUnavailable(f"export process failed: {exc}") from exc
    logger.debug("export output:\n%s", result.stderr)
    tail = "\n".join(result.stderr.strip().splitlines()[-5:])
    if result.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        if result.returncode == _EXIT_MODEL_UNAVAILABLE:
            raise ModelUnavailable(tail or f"cannot load {spec.source}")
        if result.returncode == _EXIT_UNSUPPORTED:
            # Deterministic: remember it so every start does not pay for it again.
            reason = {"model_id": spec.model_id, "recipe": RECIPE, "reason": tail}
            failed.write_text(json.dumps(reason), encoding="utf-8")
        raise OnnxUnavailable(f"export exited with {result.returncode}: {tail}")
    try:
        work.rename(folder)
    except OSError:
        shutil.rmtree(work, ignore_errors=True)
        if not (folder / META_FILE).is_file():
            raise OnnxUnavailable(f"cannot move the export into {folder}") from None
    failed.unlink(missing_ok=True)
    logger.info("ONNX export of %s took %.1f s", spec.model_id, time.perf_counter() - started)


def export_main(request_json: str) -> int:
    """Child process: export, quantize and check one model. Returns an exit code.

    Runs with torch and sentence-transformers loaded, which is why it is a
    separate process. Writes meta.json last: its presence marks a complete,
    checked export. A failure to export is deterministic for a given model
    and recipe, so it exits with _EXIT_UNSUPPORTED and the parent remembers.
    Its stderr is the parent's log of the export (the last lines become the
    reason given), so logging goes there.
    """
    import warnings

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    warnings.simplefilter("ignore")  # tracer and deprecation chatter, read by no one
    request = json.loads(request_json)
    out = Path(request["out"])
    threads = int(request["threads"])
    try:
        model = load_sentence_transformer(
            request["source"],
            threads,
            bool(request["local_files_only"]),
            {"attn_implementation": "eager"},
        )
    except ModelUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return _EXIT_MODEL_UNAVAILABLE
    try:
        _check_exportable(model)
        meta = _export_and_check(model, out, threads)
    except OnnxUnavailable as exc:
        print(f"not exportable: {exc}", file=sys.stderr)
        return _EXIT_UNSUPPORTED
    # The exporters fail in many library-specific ways; all mean "not this model".
    except Exception:
        logger.exception("export failed")
        return _EXIT_UNSUPPORTED
    meta.update(model_id=request["model_id"], source=request["source"])
    (out / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return 0


def _export_and_check(model: Any, out: Path, threads: int) -> dict[str, Any]:
    """Export to `out`, then compare with sentence-transformers on the probes."""
    from tokenizers import Tokenizer

    input_names = _export_fp32_then_int8(model, out)
    # A copy: the model's own tokenizer keeps its settings for the reference run.
    tokenizer = Tokenizer.from_str(model.tokenizer.backend_tokenizer.to_str())
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tokenizer.save(str(out / "tokenizer.json"))
    meta: dict[str, Any] = {
        "recipe": RECIPE,
        "dim": int(model.get_embedding_dimension()),
        "max_tokens": int(model.max_seq_length),
        "input_names": input_names,
    }
    probes = list(_PROBES)
    reference = model.encode(
        probes, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
    )
    candidate = OnnxEncoder(out, meta, threads, tokenizer).encode(probes)
    cosines = (reference * candidate).sum(axis=1)
    meta["probe_cosine_mean"] = round(float(cosines.mean()), 4)
    meta["probe_cosine_min"] = round(float(cosines.min()), 4)
    if cosines.mean() < _MIN_MEAN_COSINE or cosines.min() < _MIN_COSINE:
        raise OnnxUnavailable(
            f"int8 vectors too far from torch: cosine mean {cosines.mean():.4f}, "
            f"min {cosines.min():.4f}"
        )
    return meta


def _check_exportable(model: Any) -> None:
    """Only Transformer -> mean Pooling (-> Normalize) is reproduced in numpy."""
    modules = list(model)
    kinds = [type(m).__name__ for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise OnnxUnavailable(f"modules {kinds} are not Transformer + Pooling (+ Normalize)")
    pooling = modules[1].get_config_dict()
    # sentence-transformers 6 says "pooling_mode": "mean"; older ones set flags.
    flags = {k for k, v in pooling.items() if k.startswith("pooling_mode_") and v}
    mean = pooling.get("pooling_mode") == "mean" or flags == {"pooling_mode_mean_tokens"}
    if not mean:
        raise OnnxUnavailable(f"pooling {pooling} is not mean pooling")
    fast = getattr(model.tokenizer, "backend_tokenizer", None) is not None
    if getattr(modules[0], "auto_model", None) is None or not fast:
        raise OnnxUnavailable("no text transformer with a fast tokenizer")


def _export_fp32_then_int8(model: Any, out: Path) -> list[str]:
    """torch.onnx (TorchScript exporter, dynamic batch and length), then int8.

    The TorchScript exporter is used because the newer dynamo exporter needs
    onnxscript; eager attention because its graph runs faster in onnxruntime
    than the traced SDPA one (measured: about 1.5x on 256-piece texts).
    """
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    transformer = model[0].auto_model.eval()
    accepted = inspect.signature(transformer.forward).parameters
    wanted = model.tokenizer.model_input_names
    known = ("input_ids", "attention_mask", "token_type_ids")
    names = [n for n in known if n in wanted and n in accepted]

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = transformer

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            inputs = dict(zip(names, tensors, strict=True))
            hidden: torch.Tensor = self.inner(**inputs).last_hidden_state
            return hidden

    sample = model.tokenizer(
        ["a short one", "and a somewhat longer sample sentence"], padding=True, return_tensors="pt"
    )
    fp32 = out / "model.fp32.onnx"
    with torch.no_grad():
        torch.onnx.export(
            LastHiddenState().eval(),
            tuple(sample[n] for n in names),
            str(fp32),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]},
            opset_version=17,
            dynamo=False,
        )
    quantize_dynamic(
        str(fp32),
        str(out / ONNX_FILE),
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        weight_type=QuantType.QInt8,
    )
    fp32.unlink()
    return names
