# One image for every process of StudyPublicator: the API/dashboard, the worker (Storage SCP + deployments),
# the Prefect server, and the commands (migrate, create-user, backup...). See docker-compose.yml.
# The in-browser viewers, built once from the npm registry (pinned by viewer/package-lock.json and the OHIF
# integrity in deployments/ohif.py); only the served files reach the final image.
FROM node:20-bookworm-slim AS viewer
RUN apt-get update && apt-get install -y --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY viewer/package.json viewer/package-lock.json ./viewer/
RUN cd viewer && npm ci --no-audit --no-fund --loglevel=error
COPY viewer ./viewer
COPY deployments/ohif.py ./deployments/ohif.py
RUN cd viewer && node build.mjs && cd .. && python3 deployments/ohif.py viewer/dist/ohif

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STUDYPUB_WORK_DIR=/var/lib/studypub \
    STUDYPUB_API__VIEWER_ASSETS_DIR=/app/viewer/dist

# The run command's runtime packages (deployments/setup.sh; tests/unit/test_runtime_deps.py compares them):
# Tesseract for burned-in text, dcmtk's encoders for the demo studies (the compose file's demo-studies).
# Beyond them, pg_dump/pg_restore for `studypub backup` / `studypub restore` against the compose PostgreSQL.
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client dcmtk \
       tesseract-ocr tesseract-ocr-eng tesseract-ocr-rus \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY studypub ./studypub
COPY flows ./flows
COPY tasks ./tasks
COPY api ./api
COPY dashboard ./dashboard
COPY deployments ./deployments
COPY prefect.yaml ./
COPY --from=viewer /src/viewer/dist ./viewer/dist
RUN pip install -c constraints.txt .

RUN useradd --system --uid 10001 --home-dir /var/lib/studypub --create-home studypub \
    && mkdir -p /certs /backups && chown studypub /certs /backups
USER studypub

EXPOSE 8000 11113
CMD ["studypub", "api", "--host", "0.0.0.0"]
