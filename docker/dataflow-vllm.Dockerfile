# syntax=docker/dockerfile:1
# Dataflow worker image for synthpost on GPU workers: CUDA vLLM + Beam SDK + this project
# (+ model weights, if asked: MODELS below).
#
# Build and push (from the repository root; not buildable on the CPU dev machines):
#   docker build -f docker/dataflow-vllm.Dockerfile -t REGION-docker.pkg.dev/PROJECT/REPO/synthpost-vllm:0.1 .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/synthpost-vllm:0.1
# Use it with: --sdk_container_image=REGION-docker.pkg.dev/PROJECT/REPO/synthpost-vllm:0.1
#
# Weights baked in (no download on any worker; ~15 GB per 7B model in the image):
#   docker build --build-arg MODELS="Qwen/Qwen2.5-7B-Instruct Qwen/Qwen2.5-Math-7B-Instruct" \
#     --secret id=hf_token,env=HF_TOKEN -f docker/dataflow-vllm.Dockerfile -t IMAGE .
# puts each hub repo in /opt/models/<name> (config: `model: /opt/models/Qwen2.5-7B-Instruct`, a local
# directory, so the server runs offline). The token (for gated models) is a build secret: it is
# never stored in a layer.
#
# The Beam version here must equal the launcher's (requirements/cpu.lock: apache-beam 2.77.0)
# and the Python minor version must match too (3.11).
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION} AS beam

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 HF_HUB_DISABLE_TELEMETRY=1 VLLM_NO_USAGE_STATS=1
RUN apt-get update && apt-get install -y --no-install-recommends \
        software-properties-common curl git && \
    add-apt-repository -y ppa:deadsnakes/ppa && apt-get update && \
    apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev && \
    rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# GPU stack: CUDA vLLM (brings its own CUDA torch), then the rest of synthpost's pins.
RUN pip install --no-cache-dir --upgrade pip && \
    pip install --no-cache-dir "vllm==0.33.0" "apache-beam[gcp]==2.77.0" \
        "trl==1.16.0" "datasets==5.2.0" "accelerate==1.15.0" "openai>=3,<4" \
        "datasketch==2.0.0" "math-verify==0.9.0" "matplotlib==3.11.2" "pyyaml==6.0.3" "psutil==7.2.2"

# Weights before the project code: editing the code does not invalidate (and re-download) this layer.
ARG MODELS=""
RUN --mount=type=secret,id=hf_token,required=false \
    for repo in ${MODELS}; do \
        HF_TOKEN="$(cat /run/secrets/hf_token 2>/dev/null)" \
            hf download "$repo" --local-dir "/opt/models/${repo##*/}" --exclude "original/*" || exit 1; \
    done

COPY pyproject.toml README.md /opt/synthpost/
COPY pipelines /opt/synthpost/pipelines
COPY datagen /opt/synthpost/datagen
COPY posttrain /opt/synthpost/posttrain
COPY rewards /opt/synthpost/rewards
RUN pip install --no-cache-dir --no-deps -e /opt/synthpost

# Beam's worker boot program: Dataflow starts the SDK harness through it.
COPY --from=beam /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]
