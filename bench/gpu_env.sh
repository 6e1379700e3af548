# Sourced (not run) by the scripts that run on a lent CUDA machine (bench/gpu_check.sh,
# scripts/gpu_train_generator.sh, scripts/gpu_issue11.sh), from the repository root: makes the package importable
# there. That machine has torch + triton but no package registry and no pydicom: pydicom (and any other wheel put
# in .whl) travels as a wheel (bench/gpu_prepare.sh). Idempotent: a second script in the same device call
# re-installs the wheels (seconds; a wheel added since is picked up) and finds the package install done.
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
  case ":${PYTHONPATH:-}:" in *:/tmp/site:*) ;; *) export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} ;; esac
fi
if ! python3 -c "import mcgenref_fast.kernels" 2>/dev/null; then
  timeout -k 10 75 python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -3
  # The package maps mcgenref_fast.kernels onto kernels/ (pyproject package-dir): without a working editable
  # install (old setuptools, no `wheel`, ...) lay the tree out by hand and build the C++ tiler in place
  # (without pybind11 the numpy twin takes over).
  if ! python3 -c "import mcgenref_fast.kernels" 2>/dev/null; then
    echo "editable install unusable: in-tree fallback (mcgenref_fast/kernels -> ../kernels, build_ext --inplace)"
    [ -e mcgenref_fast/kernels ] || ln -s ../kernels mcgenref_fast/kernels
    timeout -k 10 60 python3 setup.py -q build_ext --inplace 2>&1 | tail -3
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # scripts/*.py run from elsewhere on sys.path
  fi
fi
