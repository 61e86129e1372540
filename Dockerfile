# The RunPod serverless worker (serve.py) on a CUDA build of PyTorch (torch >= 2.6, as transformers 5 needs).
#
#   docker build -t USER/ner-worker:1 .                                      # model from a network volume
#   docker build -t USER/ner-worker:1 --build-arg MODEL_DIR=artifacts/student_10L_final .   # model baked in
#
# With a network volume, set NER_MODEL to the model folder on it (e.g. /runpod-volume/student_10L_final).
# Baked in, the model is copied to /opt/model, which NER_MODEL names by default.
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime
FROM ${BASE_IMAGE}

WORKDIR /app
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    RUNPOD_LOG_LEVEL=WARN \
    NER_MODEL=/opt/model \
    NER_PRECISION=auto

COPY requirements.txt .
# the base image's CUDA torch satisfies torch>=2.6, so pip keeps it
RUN pip install -r requirements.txt && python -c "import torch, transformers, runpod, onnxruntime"

COPY serve.py models.py decoding.py data_loader.py precision.py utils.py ./

# A model folder to bake in (a folder of the build context); by default an empty placeholder, and the
# model comes from a volume.
ARG MODEL_DIR=docker/no-model
COPY ${MODEL_DIR} /opt/model

CMD ["python", "-u", "serve.py"]
