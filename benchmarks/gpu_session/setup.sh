set -e
R=$PWD
rm -rf /tmp/repo; cp -r "$R" /tmp/repo
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/repo/.gpu/whl/*.whl
cd /tmp/repo && python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site . 2>&1 | tail -3
source /tmp/repo/.gpu/env.sh
python3 -c "import compress, datasets, pydantic, torch; from importlib.metadata import entry_points as e; print('ok', torch.__version__, torch.cuda.get_device_name(), len(e(group='compress.steps')))"
