# A TensorGrid node on NVIDIA GPUs. From the repository root:
#   docker build -f deploy/docker/node-cuda.Dockerfile -t tensorgrid-node-cuda .
#   docker run --gpus all ... tensorgrid-node-cuda   (the NVIDIA Container Toolkit gives the driver)
# Not built by the tests (no container daemon or GPU there): its command is checked against
# the node's argument parser (tests/unit/test_deploy.py).
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tensorgrid tensorgrid
COPY coordinator coordinator
COPY node node
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
COPY requirements.lock /tmp/requirements.lock
COPY --from=wheel /wheels /wheels
# PyPI's torch for Linux x86_64 is the CUDA build (its CUDA libraries come as nvidia-* wheels,
# which the CPU-made lock does not pin); the rest at the lock's versions.
RUN pip install --no-cache-dir -c /tmp/requirements.lock "$(ls /wheels/tensorgrid-*.whl)[node,chain]" \
 && useradd --system --home-dir /var/lib/tensorgrid --create-home tensorgrid
USER tensorgrid
VOLUME /var/lib/tensorgrid
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
ENTRYPOINT ["tensorgrid-node"]
CMD ["--keystore", "/run/secrets/node-key.json", "--password-file", "/run/secrets/node-key-password", "run", "--data-dir", "/var/lib/tensorgrid", "--device", "cuda"]
