# auditlake: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install proto demo demo-check test lint bench browser java postgres openssl-headers clean

install: $(STAMP)

# Re-install when the project's dependency list changes.
$(STAMP): pyproject.toml collector/integrity/_chainhash.c
	@$(MAKE) --no-print-directory openssl-headers
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Regenerate the committed protobuf/gRPC modules from proto/auditlake/v1/audit.proto.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto \
	    --grpc_python_out=proto proto/auditlake/v1/audit.proto

# Collector + sample traffic + compliance answers + admin UI, until Ctrl-C.
demo: $(STAMP)
	$(PY) examples/demo.py

# The same demo, exiting after the answers (used by the test suite).
demo-check: $(STAMP)
	$(PY) examples/demo.py --no-serve

# Debian's chromium for the admin UI's browser tests (never a downloaded browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; }

# OpenSSL's headers for verify's C loop (collector/integrity/_chainhash.c links
# libcrypto, the SHA-256 hashlib uses); without them pip skips the optional
# extension and verify runs its Python loop, several times slower.
openssl-headers:
	@test -f /usr/include/openssl/sha.h || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libssl-dev >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq libssl-dev >/dev/null; fi; }

# Debian's PostgreSQL for the ORM capture tests (tests/integrations): the tests
# start their own server with initdb + pg_ctl in a temporary directory.
postgres:
	@{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq postgresql >/dev/null; fi; }

# Debian's Java 17 for the Spark reader test (tests/fleet): pyspark runs a JVM.
java:
	@command -v java >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq openjdk-17-jre-headless >/dev/null; fi; }

test: $(STAMP) browser java postgres
	$(PY) -m pytest -q -p no:cacheprovider

# mypy resolves auditlake.sdk / auditlake.collector through a tree of
# symlinks, since the installed package maps them from sdk/ and collector/.
lint: $(STAMP)
	$(VENV)/bin/ruff check sdk collector proto/auditlake/packing.py tests bench examples
	rm -rf build/typecheck && mkdir -p build/typecheck/auditlake
	ln -s ../../../proto/auditlake/__init__.py build/typecheck/auditlake/__init__.py
	ln -s ../../../proto/auditlake/v1 build/typecheck/auditlake/v1
	ln -s ../../../proto/auditlake/packing.py build/typecheck/auditlake/packing.py
	ln -s ../../../sdk build/typecheck/auditlake/sdk
	ln -s ../../../collector build/typecheck/auditlake/collector
	cd build/typecheck && ../../$(VENV)/bin/mypy --config-file ../../pyproject.toml -p auditlake.packing -p auditlake.sdk -p auditlake.collector

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) auditlake-demo build .pytest_cache collector/integrity/_chainhash.*.so
