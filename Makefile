# pggit.chaos: everything a fresh Debian 12 machine needs, in two commands:
#   make demo   set up, build the lab, run every experiment, print the report
#   make test   every test (unit, integration, sanity, lint, molecule, dead-man)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV        ?= .venv
BIN         := $(CURDIR)/$(VENV)/bin
PYTHON      ?= python3
LAB_HOSTS   ?= 3
REPORT_DIR  ?= $(CURDIR)/reports
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PGGIT_CHAOS_REPORT_DIR := $(REPORT_DIR)
export PATH := $(BIN):$(PATH)

APT_PACKAGES := iproute2 procps iptables nftables stress-ng faketime openssh-server openssh-client \
                libnetfilter-queue-dev postgresql-15 postgresql-contrib python3-psycopg2 rsync shellcheck git
PLAYBOOK     := $(BIN)/ansible-playbook
LAB_ARGS     := -e pggit_lab_hosts=$(LAB_HOSTS) -e pggit_lab_python=$(BIN)/python

.PHONY: help deps apt venv link lab lab-down demo test unit integration sanity lint molecule deadman bench build clean

help:
	@echo "make demo | make test | make lab | make lab-down | make bench | make build"

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
	@if [ -x $(PLAYBOOK) ]; then $(PLAYBOOK) playbooks/lab_down.yml; \
	else echo "no venv: nothing of the lab can have been built by make"; fi

demo: deps lab
	rm -rf $(REPORT_DIR)
	$(PLAYBOOK) playbooks/chaos.yml -e chaos_fail_on_failure=false
	@echo; cat $(REPORT_DIR)/chaos-report.md; echo
	@echo "Reports: $(REPORT_DIR)/chaos-report.md, chaos-report.json, chaos-junit.xml"
	@echo "The lab stays up for you to explore; 'make lab-down' removes it."

## Tests -------------------------------------------------------------------
test: deps
	@rm -rf tests/output && mkdir -p tests/output
	$(MAKE) unit integration sanity lint molecule deadman
	@$(BIN)/python tests/summary.py tests/output

unit: deps
	$(BIN)/pytest tests/unit -q --junitxml=tests/output/unit.xml

integration: deps
	$(BIN)/pytest tests/integration -q --junitxml=tests/output/integration.xml

sanity: deps
	bash tests/sanity/run.sh $(VENV)

lint: deps
	$(BIN)/ansible-lint --profile production

molecule: deps
	$(BIN)/molecule test -s default
	$(BIN)/molecule test -s network

# Kill -9 ansible-playbook mid-fault; the target must heal itself by its TTL.
deadman: deps
	$(MAKE) lab
	trap '$(MAKE) lab-down' EXIT; $(BIN)/pytest tests/lab -q --junitxml=tests/output/lab.xml

bench: deps
	$(MAKE) lab
	trap '$(MAKE) lab-down' EXIT; $(BIN)/python bench/spine.py && $(BIN)/python bench/network.py

build: deps
	$(BIN)/ansible-galaxy collection build --force --output-path .cache/dist

clean: lab-down
	rm -rf .cache reports tests/output $(VENV)
