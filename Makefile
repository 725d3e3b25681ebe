# smsagent developer commands. Each target installs what it needs, so both
# `make test` and `make demo` work on a fresh Debian 12 machine as root.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

# Debian packages the suite drives for real: rsync and sshd for the target,
# iproute2 for network namespaces, acl/attr for metadata checks, the block
# tools for inventory tests, debootstrap and nspawn for the systemd tests,
# libsystemd-dev and pkg-config to build systemd-python.
SYSTEM_PACKAGES := rsync openssh-server openssh-client iproute2 acl attr \
	lvm2 btrfs-progs xfsprogs dosfstools fusefat fdisk parted util-linux \
	debootstrap systemd-container libsystemd-dev pkg-config gcc python3-dev rpm openssl \
	qemu-system-x86 ovmf grub-pc-bin grub-efi-amd64-bin mtools

.PHONY: test lint unit demo system-deps venv clean package test-matrix

test: system-deps $(STAMP) lint
	$(PY) -m pytest -q --durations=25

lint: $(STAMP)
	$(VENV)/bin/ruff check smsagent tests bench
	$(VENV)/bin/ruff format --check smsagent tests bench
	$(VENV)/bin/mypy smsagent

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

demo: system-deps $(STAMP)
	$(PY) -m tests.demo

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing:$$missing"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null \
			|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; }; \
		else \
			echo "missing system packages (run as root to install):$$missing"; \
		fi; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml tests/plugins/fsplugin/pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,systemd]'
	$(PIP) install -q -e tests/plugins/fsplugin
	touch $(STAMP)

# The .deb and .rpm (nfpm) into dist/: smsagent and its wheels for CPython 3.9-3.13 on x86_64.
package: $(STAMP)
	$(PY) packaging/build.py --dist dist

# Unit, integration and interop tests (not the slow ones) under the pyenv CPythons 3.9-3.13 on
# this machine other than 3.11, which `make test` runs them on, each in its own .venv-3.X; fails
# if any version fails.
test-matrix: system-deps
	sh tests/system/matrix.sh 3.9 3.13

clean:
	rm -rf $(VENV) dist build .pytest_cache .mypy_cache .ruff_cache
