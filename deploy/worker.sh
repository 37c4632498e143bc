#!/bin/sh
# The worker's start: wait for the server, make sure the work pool exists, register every
# deployment on it, then poll for runs. The same commands run natively in tests/integration/test_serve.py.
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
prefect work-pool inspect "$pool" >/dev/null 2>&1 || prefect work-pool create "$pool" --type process
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
llmill deploy "${LLMILL_CONFIG:-configs/demo.yaml}" "$@"
exec prefect worker start --pool "$pool"
