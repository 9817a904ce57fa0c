# Dataflow worker image for synthpost on GPU workers: CUDA vLLM + Beam SDK + this project.
#
# Build and push (from the repository root; not buildable on the CPU dev machines):
#   docker build -f docker/dataflow-vllm.Dockerfile -t REGION-docker.pkg.dev/PROJECT/REPO/synthpost-vllm:0.1 .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/synthpost-vllm:0.1
# Use it with: --sdk_container_image=REGION-docker.pkg.dev/PROJECT/REPO/synthpost-vllm:0.1
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

COPY pyproject.toml README.md /opt/synthpost/
COPY pipelines /opt/synthpost/pipelines
COPY datagen /opt/synthpost/datagen
COPY posttrain /opt/synthpost/posttrain
COPY rewards /opt/synthpost/rewards
RUN pip install --no-cache-dir --no-deps -e /opt/synthpost

# Beam's worker boot program: Dataflow starts the SDK harness through it.
COPY --from=beam /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]
