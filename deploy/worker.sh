#!/bin/sh
# The worker's start: wait for the server, register every deployment on the work pool (which
# `llmill deploy` creates if missing), then poll for runs. The same commands run natively in
# tests/integration/test_serve.py.
set -eu
# the server's basic-auth password: never the example's, never empty
password="${PREFECT_API_AUTH_STRING#*:}"
if [ -z "${PREFECT_API_AUTH_STRING:-}" ] || [ -z "$password" ] || [ "$password" = "$PREFECT_API_AUTH_STRING" ] || [ "$password" = "change-me" ]; then
  echo "refusing to start: set PREFECT_AUTH_STRING in .env to user:password with a password of your own (not empty, not change-me)" >&2
  exit 2
fi
pool="${LLMILL_WORK_POOL:-llmill}"
until python -c "import os, urllib.request; urllib.request.urlopen(os.environ['PREFECT_API_URL'].rstrip('/') + '/health', timeout=3)" 2>/dev/null; do
  echo "waiting for the Prefect server at ${PREFECT_API_URL}"; sleep 2
done
set -- --pool "$pool"
if [ -n "${LLMILL_DASK_ADDRESS:-}" ]; then  # the data stages' shards on that Dask cluster
  set -- "$@" --set executor.kind=dask --set "executor.address=$LLMILL_DASK_ADDRESS"
fi
if [ -n "${LLMILL_ROOT:-}" ]; then  # the datasets on an object store (s3://bucket/prefix)
  set -- "$@" --set "root=$LLMILL_ROOT"
fi
if [ -n "${LLMILL_RESULTS_URL:-}" ]; then  # the task cache beside them, shared by every worker
  llmill results-storage "$LLMILL_RESULTS_URL" --overwrite
  export PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=remote-file-system/llmill-results
fi
# creates the process work pool if there is none (one process: each `prefect` command costs ~3 s of start-up)
llmill deploy "${LLMILL_CONFIG:-configs/demo.yaml}" "$@"
exec prefect worker start --pool "$pool"
