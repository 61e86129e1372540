"""Precision, decided once: the training precision and its autocast (`resolve_precision`,
`autocast_for`), and the inference precisions fp32, bf16 autocast, and int8 through ONNX Runtime.

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
import tempfile
import warnings
from pathlib import Path

import torch

from models import NERModel
from utils import PipelineError, publishing, write_json

PRECISIONS = ("fp32", "bf16", "int8")  # of inference; training takes fp32, bf16 or fp16
ONNX_NAME, INT8_NAME, META_NAME = "model.onnx", "model.int8.onnx", "onnx_export.json"
OPSET = 17


def resolve_precision(mode: str, device: torch.device) -> str:
    """`auto` -> bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU."""
    if mode == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "fp16" and device.type != "cuda":
        raise PipelineError("training.mixed_precision: fp16 needs a CUDA GPU; use fp32 or bf16 on CPU.")
    return mode


def autocast_for(precision: str, device: torch.device):
    """A factory of autocast contexts for the chosen precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)



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
    with warnings.catch_warnings(), torch.no_grad(), publishing(onnx_path) as staged_onnx, \
            publishing(int8_path) as staged_int8:
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        # the wrapper in eval mode: the exporter restores the wrapper's mode afterwards, and a new
        # module's mode is train, which would leave the model with dropout on
        torch.onnx.export(_Logits(model.backbone).eval(), (dummy, mask), str(staged_onnx), dynamo=False,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={name: {0: "batch", 1: "sequence"}
                                        for name in ("input_ids", "attention_mask", "logits")},
                          opset_version=OPSET, do_constant_folding=True)
        quiet = logging.getLogger()  # the quantizer logs advice about pre-processing at WARNING on the root logger
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            quantize_dynamic(str(staged_onnx), str(staged_int8), weight_type=QuantType.QInt8, per_channel=True)
        finally:
            quiet.setLevel(level)
    write_json(meta_path, meta)  # last: it vouches for the two files
    return onnx_path, int8_path


class OnnxNERModel:
    """A model for decoding (`decoding.Tagger`) whose token classifier runs in ONNX Runtime on the
    CPU; the CRF's scores stay in torch."""

    def __init__(self, model: NERModel, onnx_file: Path, threads: int | None = None):
        onnxruntime = _onnxruntime()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        self.labels, self.crf, self.max_subwords = model.labels, model.crf, model.max_subwords
        # ONNX Runtime gets the cores; torch is left with CRF decoding only, on one thread, so that
        # its idle OpenMP threads do not spin against ONNX Runtime's (measured: +20% words/s, 2 cores)
        torch.set_num_threads(1)

    def token_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.session.run(["logits"], {"input_ids": input_ids.cpu().numpy(),
                                               "attention_mask": attention_mask.cpu().numpy()})[0]
        return torch.from_numpy(logits)


def export_folder(name_or_path: str) -> Path:
    """Where a model's ONNX files are cached: beside it, or in the user cache for a hub id or a
    folder this process cannot write to (a read-only volume, another user's folder)."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir() and _can_write_in(folder):
        return folder
    return Path.home() / ".cache" / "ner_pipeline" / "onnx" / str(name_or_path).strip("/").replace("/", "--")


def _can_write_in(folder: Path) -> bool:
    """Try it: permission bits say nothing of read-only mounts, nor of root."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def for_inference(model: NERModel, name_or_path: str, precision: str, device: torch.device, log=print):
    """The model (a `decoding.Tagger`) and autocast factory that `decoding.predict` should use at
    this precision."""
    if precision not in PRECISIONS:
        raise PipelineError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}.")
    if precision == "fp32":
        return model, contextlib.nullcontext
    if precision == "bf16":
        if device.type == "cpu" and not cpu_supports_bf16():
            log("warning: this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 runs emulated and is "
                "usually slower than fp32 here; --precision int8 is the fast CPU path.")
        return model, autocast_for("bf16", device)
    if device.type != "cpu":
        raise PipelineError("--precision int8 runs on the CPU (ONNX Runtime); use --device cpu, or "
                            "--precision bf16 on a GPU.")
    _, int8_path = export_onnx(model, export_folder(name_or_path))
    return OnnxNERModel(model, int8_path), contextlib.nullcontext
