# Serving image: BentoML service over ONNX Runtime, with the packaged model baked in.
#
#   (first the pipeline: `make run` writes models/package/{model.onnx,card.json,provenance.json})
#   docker build -t keras-mlp-service .
#   docker run --rm -p 3000:3000 --read-only --tmpfs /tmp keras-mlp-service
#   (podman: `podman build --format docker ...`, or the OCI format drops the HEALTHCHECK)
#
# The container writes only under /tmp (BENTOML_HOME, HOME, TMPDIR), so a read-only root
# filesystem plus a tmpfs on /tmp is enough. Model: SERVICE_MODEL_DIR=/opt/model.
#
# BASE_IMAGE must be a Debian-like image with Python 3.11 as `python3` (python:3.11-slim, or the
# debootstrap stand-in from scripts/build-base-image.sh when no registry is reachable).
ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python3 -m venv /opt/venv

# Hash-locked serving set exported from uv.lock (bentoml, onnxruntime, numpy and their deps),
# wheels only: no compiler in the image, and no sdist build step can sneak in.
# Then drop pip/setuptools (not needed at runtime; pip last, it removes itself) and write the
# bytecode once, at build time, since the root filesystem is read-only at runtime.
# unchecked-hash pycs stay valid whatever the file mtimes (COPY --from, timestamp-rewriting
# builders), so Python never tries to recompile them.
COPY service/requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/python -m pip install --no-cache-dir --require-hashes --only-binary=:all: \
        --no-compile -r /tmp/requirements.txt \
 && /opt/venv/bin/python -m pip uninstall --yes --quiet setuptools pip \
 && /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/venv/lib

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}

ARG APP_UID=10001
RUN groupadd --system --gid "${APP_UID}" app \
 && useradd --system --no-log-init --uid "${APP_UID}" --gid app \
        --home-dir /tmp --no-create-home --shell /usr/sbin/nologin app

COPY --from=builder /opt/venv /opt/venv
COPY service/ /opt/service/
# The pipeline's package-stage output: model.onnx, card.json, provenance.json.
COPY models/package/ /opt/model/
# Modes are set here, not taken from the build context: a host's umask or private temp files
# must not decide whether the service user can read its model. Read-only for everyone.
RUN /opt/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/service \
 && chmod -R a=rX /opt/service /opt/model

# Everything writable lives under /tmp, so the container runs with --read-only --tmpfs /tmp.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    BENTOML_HOME=/tmp/bentoml \
    BENTOML_DO_NOT_TRACK=true \
    SERVICE_MODEL_DIR=/opt/model

WORKDIR /opt/service
USER ${APP_UID}:${APP_UID}
EXPOSE 3000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=4).status != 200)"]

CMD ["bentoml", "serve", "service:MLPService", "--host", "0.0.0.0", "--port", "3000"]
