"""Inference precisions: fp32, bf16 autocast, and int8 through ONNX Runtime.

int8 exports the token classifier (pruned heads included) to ONNX with dynamic batch and
sequence axes, quantizes its weights to int8 (ONNX Runtime dynamic quantization; the
`torch.ao.quantization` path is deprecated) and runs it on the CPU. The CRF stays in Python:
decoding works on the exported emissions exactly as for the torch model. The exported files
(`model.onnx`, `model.int8.onnx`) are cached beside the model and rebuilt when its weights change.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import warnings
from pathlib import Path

import torch

from models import ModelOutput, NERModel
from utils import PipelineError

PRECISIONS = ("fp32", "bf16", "int8")
ONNX_NAME, INT8_NAME, META_NAME = "model.onnx", "model.int8.onnx", "onnx_export.json"
OPSET = 17


def _onnxruntime():
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime
    except ImportError as error:
        raise PipelineError("--precision int8 needs onnx and onnxruntime: pip install onnx onnxruntime "
                            f"(they are in requirements.txt). ({error})") from error
    return onnxruntime


def cpu_supports_bf16() -> bool:
    """Native bf16 on this CPU (AVX512-BF16 or AMX); without it bf16 is emulated and slow."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def weights_fingerprint(model: NERModel) -> str:
    """sha256 of the backbone's weights: the ONNX cache is valid only for these exact values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _Logits(torch.nn.Module):
    """What is exported: input ids and mask in, token logits out."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids, attention_mask):
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx(model: NERModel, folder: Path) -> tuple[Path, Path]:
    """Write model.onnx and model.int8.onnx into `folder` unless they match the weights already."""
    onnxruntime = _onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path, int8_path, meta_path = folder / ONNX_NAME, folder / INT8_NAME, folder / META_NAME
    meta = {"weights_sha256": weights_fingerprint(model), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "opset": OPSET}
    if onnx_path.exists() and int8_path.exists() and meta_path.exists() and \
            json.loads(meta_path.read_text()) == meta:
        return onnx_path, int8_path
    model = model.cpu().eval()
    dummy = torch.full((2, 16), model.config.pad_token_id or 0, dtype=torch.long)
    dummy[:, :12] = 5
    mask = (dummy != (model.config.pad_token_id or 0)).long()
    staging_onnx, staging_int8 = folder / f".{ONNX_NAME}.tmp", folder / f".{INT8_NAME}.tmp"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        # the wrapper in eval mode: the exporter restores the wrapper's mode afterwards, and a new
        # module's mode is train, which would leave the model with dropout on
        torch.onnx.export(_Logits(model.backbone).eval(), (dummy, mask), str(staging_onnx), dynamo=False,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={name: {0: "batch", 1: "sequence"}
                                        for name in ("input_ids", "attention_mask", "logits")},
                          opset_version=OPSET, do_constant_folding=True)
    quiet = logging.getLogger()  # the quantizer logs advice about pre-processing at WARNING on the root logger
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(staging_onnx), str(staging_int8), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        quiet.setLevel(level)
    os.replace(staging_onnx, onnx_path)
    os.replace(staging_int8, int8_path)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")  # last: it vouches for the two files
    return onnx_path, int8_path


class OnnxNERModel:
    """An NERModel whose token classifier runs in ONNX Runtime (CPU); the CRF stays in torch."""

    def __init__(self, model: NERModel, onnx_file: Path, threads: int | None = None):
        onnxruntime = _onnxruntime()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        self.model, self.training = model, False
        # ONNX Runtime gets the cores; torch is left with CRF decoding only, on one thread, so that
        # its idle OpenMP threads do not spin against ONNX Runtime's (measured: +20% words/s, 2 cores)
        torch.set_num_threads(1)

    labels = property(lambda self: self.model.labels)
    info = property(lambda self: self.model.info)
    crf = property(lambda self: self.model.crf)
    config = property(lambda self: self.model.config)

    def parameters(self):
        return self.model.parameters()

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def __call__(self, input_ids, attention_mask, output_hidden_states: bool = False) -> ModelOutput:
        logits = self.session.run(["logits"], {"input_ids": input_ids.cpu().numpy(),
                                               "attention_mask": attention_mask.cpu().numpy()})[0]
        return ModelOutput(torch.from_numpy(logits), None)


def export_folder(name_or_path: str) -> Path:
    """Where a model's ONNX files are cached: beside it, or in the user cache for a hub id or a
    folder we cannot write to."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir() and os.access(folder, os.W_OK):
        return folder
    return Path.home() / ".cache" / "ner_pipeline" / "onnx" / str(name_or_path).strip("/").replace("/", "--")


def for_inference(model: NERModel, name_or_path: str, precision: str, device: torch.device, log=print):
    """The model and autocast factory that `decoding.predict` should use at this precision."""
    if precision not in PRECISIONS:
        raise PipelineError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}.")
    if precision == "fp32":
        return model, contextlib.nullcontext
    if precision == "bf16":
        if device.type == "cpu" and not cpu_supports_bf16():
            log("warning: this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 runs emulated and is "
                "usually slower than fp32 here; --precision int8 is the fast CPU path.")
        return model, lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if device.type != "cpu":
        raise PipelineError("--precision int8 runs on the CPU (ONNX Runtime); use --device cpu, or "
                            "--precision bf16 on a GPU.")
    _, int8_path = export_onnx(model, export_folder(name_or_path))
    return OnnxNERModel(model, int8_path), contextlib.nullcontext
