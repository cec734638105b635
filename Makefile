# pggit.chaos: everything a fresh Debian 12 machine needs, in two commands:
#   make demo   set up, build the lab, run every experiment, print the report
#   make test   every test (unit, integration, sanity, lint, molecule, dead-man)
# Labs have names (1-10 of a-z0-9), so several coexist on one machine:
#   make lab LAB_NAME=h2 LAB_HOSTS=1   a private lab: inventories/h2/hosts.yml, /var/tmp/pggit-lab-h2,
#                                      namespaces pggh2-N, bridge pggh20, a /24 of 198.18.0.0/15
#                                      (LAB_SUBNET_INDEX=0..511 picks it by hand)
#   make lab-down LAB_NAME=h2          removes that lab only (HA or not)
#   make lab LAB_HA=patroni            Patroni 4 over etcd, plus an etcd witness host (LAB_PATRONI=debian: 3.0.2)
# The demo lab is LAB_NAME=lab; make test builds and removes its own lab
# (TEST_LAB_NAME=test), make bench too (BENCH_LAB_NAME=bench).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV        ?= .venv
BIN         := $(CURDIR)/$(VENV)/bin
PYTHON      ?= python3
LAB_HOSTS   ?= 3
LAB_NAME    ?= lab
LAB_SUBNET_INDEX ?=
# LAB_HA=patroni: Patroni over etcd on the lab hosts, plus an etcd witness host (README: The HA lab).
# LAB_PATRONI=debian: Debian's patroni 3.0.2 instead of the PyPI 4.x in the venv.
LAB_HA      ?=
LAB_PATRONI ?=
TEST_LAB_NAME ?= test
BENCH_LAB_NAME ?= bench
TORTURE_RUNS ?= 60
REPORT_DIR  ?= $(CURDIR)/reports
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PGGIT_CHAOS_REPORT_DIR := $(REPORT_DIR)
export PATH := $(BIN):$(PATH)
# What the lab's users read: the playbooks (lab_up/lab_down default to it),
# molecule (its inventory link) and tests/lab, bench (labtools).
# Recursive (=), so that a target's own LAB_NAME (below) reaches its recipe.
export PGGIT_LAB_NAME = $(LAB_NAME)
export PGGIT_LAB_INVENTORY = $(CURDIR)/inventories/$(LAB_NAME)/hosts.yml

APT_PACKAGES := iproute2 procps iptables nftables stress-ng faketime openssh-server openssh-client \
                libnetfilter-queue-dev postgresql-15 postgresql-contrib python3-psycopg2 rsync shellcheck git \
                chromium
PLAYBOOK     := $(BIN)/ansible-playbook
LAB_VARS      = -i localhost, -e pggit_lab_name=$(LAB_NAME) -e pggit_lab_inventory=$(PGGIT_LAB_INVENTORY)
LAB_ARGS      = $(LAB_VARS) -e pggit_lab_hosts=$(LAB_HOSTS) -e pggit_lab_python=$(BIN)/python \
                $(if $(LAB_SUBNET_INDEX),-e pggit_lab_subnet_index=$(LAB_SUBNET_INDEX)) \
                $(if $(LAB_HA),-e pggit_lab_ha=$(LAB_HA)) $(if $(LAB_PATRONI),-e pggit_lab_patroni=$(LAB_PATRONI))

.PHONY: help deps apt venv link lab lab-down demo test unit integration sanity lint molecule deadman lab-tests ha bench bench-suite torture build clean

help:
	@echo "make demo | make test | make lab [LAB_NAME=lab LAB_HOSTS=3] | make lab-down [LAB_NAME=lab] | make bench | make build"

## Set-up ------------------------------------------------------------------
deps: apt venv link

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

# Make the working tree importable as the collection pggit.chaos.
link:
	@mkdir -p .cache/collections/ansible_collections/pggit
	@ln -sfn ../../../.. .cache/collections/ansible_collections/pggit/chaos

## The lab -----------------------------------------------------------------
lab: deps
	$(PLAYBOOK) playbooks/lab_up.yml $(LAB_ARGS)

lab-down:
	@if [ -x $(PLAYBOOK) ]; then $(PLAYBOOK) playbooks/lab_down.yml $(LAB_VARS); \
	else echo "no venv: nothing of the lab can have been built by make"; fi

demo: deps lab
	rm -rf $(REPORT_DIR)
	$(PLAYBOOK) playbooks/chaos.yml -i $(PGGIT_LAB_INVENTORY) -e chaos_fail_on_failure=false
	@echo; cat $(REPORT_DIR)/chaos-report.md; echo
	@echo "Reports: $(REPORT_DIR)/chaos-report.md, chaos-report.html, chaos-report.json, chaos-junit.xml, chaos-metrics.prom"
	@echo "The lab stays up for you to explore ($(PGGIT_LAB_INVENTORY)); 'make lab-down LAB_NAME=$(LAB_NAME)' removes it."

## Tests -------------------------------------------------------------------
# The targets that build and remove a lab use one of their own (unless
# LAB_NAME is given), so the demo lab can stay up meanwhile.
molecule deadman: LAB_NAME = $(TEST_LAB_NAME)
bench: LAB_NAME = $(BENCH_LAB_NAME)

test: deps
	@rm -rf tests/output && mkdir -p tests/output
	$(MAKE) unit integration sanity lint lab-tests ha LAB_NAME=$(TEST_LAB_NAME)
	@$(BIN)/python tests/summary.py tests/output

unit: deps
	$(BIN)/pytest tests/unit -q --junitxml=tests/output/unit.xml

integration: deps
	$(BIN)/pytest tests/integration -q --junitxml=tests/output/integration.xml

sanity: deps
	bash tests/sanity/run.sh $(VENV)

lint: deps
	$(BIN)/ansible-lint --profile production

# The scenarios build and remove the lab $(LAB_NAME) (create/destroy read
# PGGIT_LAB_NAME) and link inventories/$(LAB_NAME), which must exist first.
# Each lab gets its own molecule working directory, so runs on two labs from
# one checkout do not share state.
MOLECULE_DIR = $(CURDIR)/.cache/molecule/$(LAB_NAME)
# A scenario starts from nothing: no molecule state of an earlier (killed) run, which would skip `create`
# and converge on no host, and no report of an earlier run, which `verify` would read instead.
molecule_fresh = rm -rf $(MOLECULE_DIR)/$(1) $(CURDIR)/reports/molecule$(if $(filter default,$(1)),,-$(1)) && mkdir -p inventories/$(LAB_NAME)
# One lab serves every plain scenario, then the lab tests (make lab-tests): a scenario's create step completes
# the lab that is up (about 40 s) instead of building one (about 100 s), its destroy step is skipped, and the lab
# is removed once at the end, whatever happens. A scenario therefore also starts from what the previous one left:
# the shared baseline checks (molecule/shared/verify_baseline.yml) would fail on a leftover.
MOLECULE_SCENARIOS := default network resource database
run_molecule = for s in $(MOLECULE_SCENARIOS); do \
	  rm -rf $(MOLECULE_DIR)/$$s $(CURDIR)/reports/molecule-$$s && { [ $$s != default ] || rm -rf $(CURDIR)/reports/molecule; } \
	  && MOLECULE_EPHEMERAL_DIRECTORY=$(MOLECULE_DIR)/$$s $(BIN)/molecule test -s $$s --destroy never || exit 1; \
	done
molecule: deps
	$(MAKE) lab LAB_NAME=$(LAB_NAME)
	trap '$(MAKE) lab-down LAB_NAME=$(LAB_NAME)' EXIT; $(run_molecule)

# The HA lab (Patroni over etcd), built once: molecule `failover` (primary_failover, region_failover, switchover)
# keeps it, then the HA dead-man test runs on it, then it is removed, whatever happens.
ha: LAB_NAME = $(TEST_LAB_NAME)
ha: deps
	$(call molecule_fresh,failover)
	trap '$(MAKE) lab-down LAB_NAME=$(LAB_NAME)' EXIT; \
	MOLECULE_EPHEMERAL_DIRECTORY=$(MOLECULE_DIR)/failover $(BIN)/molecule test -s failover --destroy never \
	  && $(BIN)/pytest tests/lab/test_failover_ha.py -q --junitxml=tests/output/lab-ha.xml

# Kill -9 ansible-playbook mid-fault; the target must heal itself by its TTL (and the other lab tests).
LAB_PYTEST = $(BIN)/pytest tests/lab -q --ignore=tests/lab/test_failover_ha.py --junitxml=tests/output/lab.xml
deadman: deps
	$(MAKE) lab LAB_NAME=$(LAB_NAME)
	trap '$(MAKE) lab-down LAB_NAME=$(LAB_NAME)' EXIT; $(LAB_PYTEST)

# make test: the molecule scenarios, then the lab tests, on one lab built once.
lab-tests: LAB_NAME = $(TEST_LAB_NAME)
lab-tests: deps
	$(MAKE) lab LAB_NAME=$(LAB_NAME)
	trap '$(MAKE) lab-down LAB_NAME=$(LAB_NAME)' EXIT; $(run_molecule) && $(LAB_PYTEST)

bench: deps
	$(MAKE) lab LAB_NAME=$(LAB_NAME)
	trap '$(MAKE) lab-down LAB_NAME=$(LAB_NAME)' EXIT; $(BIN)/python bench/spine.py && $(BIN)/python bench/network.py \
	  && $(BIN)/python bench/resource.py && $(BIN)/python bench/database.py && $(BIN)/python bench/torture.py --runs $(TORTURE_RUNS)

# Speed of the suite (bench/results/suite.json): the wall/window ratio and pgGit's tracking cost on a 3-host lab, then
# network_latency on every host of a 1-host and of an 8-host lab. One lab at a time, each removed whatever happens.
bench-suite: deps
	for n in 3 1 8; do ( \
	  trap '$(MAKE) lab-down LAB_NAME=bsuite'$$n EXIT; inv=$(CURDIR)/inventories/bsuite$$n/hosts.yml; \
	  $(MAKE) lab LAB_NAME=bsuite$$n LAB_HOSTS=$$n && case $$n in \
	    3) $(BIN)/python bench/suite.py ratio --inventory $$inv && $(BIN)/python bench/suite.py tracking-cost --inventory $$inv;; \
	    *) $(BIN)/python bench/suite.py scale-$$n --inventory $$inv;; \
	  esac ) || exit 1; done

# SIGKILL ansible-playbook at random moments of every experiment; nothing may be left (bench/results/torture.json).
torture: LAB_NAME = $(BENCH_LAB_NAME)
torture: deps
	$(MAKE) lab LAB_NAME=$(LAB_NAME)
	trap '$(MAKE) lab-down LAB_NAME=$(LAB_NAME)' EXIT; $(BIN)/python bench/torture.py --runs $(TORTURE_RUNS)

build: deps
	$(BIN)/ansible-galaxy collection build --force --output-path .cache/dist

clean: lab-down
	rm -rf .cache reports tests/output $(VENV)

## Execution environment (ansible-builder v3) ----------------------------------
# Writes the build context of execution-environment.yml (the collection from the tarball make build wrote);
# no container engine runs on the build machine: `podman build -t pggit-chaos-ee $(EE_CONTEXT)` elsewhere.
EE_CONTEXT ?= $(CURDIR)/.cache/ee/context
.PHONY: ee
ee: build
	@$(BIN)/ansible-builder --version >/dev/null 2>&1 || $(BIN)/pip install -q 'ansible-builder>=3.1'
	rm -rf $(EE_CONTEXT)
	$(BIN)/ansible-builder create -f execution-environment.yml -c $(EE_CONTEXT) --output-filename Containerfile
	@echo "EE build context: $(EE_CONTEXT) (build it with podman or docker: no container engine runs here)"
