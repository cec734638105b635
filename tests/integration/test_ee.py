"""make ee writes a complete ansible-builder build context whose Containerfile installs the collection from the
tarball make build wrote. No container engine runs here, so the test replays what the image build would do with
that context: the galaxy stage's collection install, verbatim, and the builder stage's dependency introspection."""
from __future__ import annotations

import filecmp
import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest
import yaml
from bindep.depends import Depends

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
SCRIPTS = ('assemble', 'check_ansible', 'check_galaxy', 'entrypoint', 'install-from-bindep', 'introspect.py', 'pip_install')


def version():
    with open(os.path.join(REPO, 'galaxy.yml')) as handle:
        return yaml.safe_load(handle)['version']


@pytest.fixture(scope='module')
def context(tmp_path_factory):
    target = tmp_path_factory.mktemp('ee') / 'context'
    proc = subprocess.run(['make', '-s', 'ee', 'EE_CONTEXT=%s' % target], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return str(target)


def stages(containerfile):
    """{stage name: its lines} of a multi-stage Containerfile."""
    found, name = {}, None
    for line in containerfile.splitlines():
        match = re.match(r'^FROM\s+\S+\s+AS\s+(\S+)', line)
        if match:
            name = match.group(1)
        if name:
            found.setdefault(name, []).append(line)
    return found


def test_context_is_complete(context):
    tarball = 'pggit-chaos-%s.tar.gz' % version()
    build = os.path.join(context, '_build')
    assert os.path.isfile(os.path.join(context, 'Containerfile'))
    for script in SCRIPTS:
        assert os.path.isfile(os.path.join(build, 'scripts', script)), script
    # The dependencies are the repository's own files, byte for byte.
    assert filecmp.cmp(os.path.join(build, 'requirements.txt'), os.path.join(REPO, 'requirements.txt'), shallow=False)
    assert filecmp.cmp(os.path.join(build, 'bindep.txt'), os.path.join(REPO, 'bindep.txt'), shallow=False)
    # The collection is the tarball make build just wrote (galaxy.yml's version), not one from a registry.
    shipped = os.path.join(build, 'collections', tarball)
    assert filecmp.cmp(shipped, os.path.join(REPO, '.cache', 'dist', tarball), shallow=False)
    with tarfile.open(shipped) as archive:
        names = archive.getnames()
    assert 'meta/execution-environment.yml' in names and 'bindep.txt' in names and 'requirements.txt' in names
    with open(os.path.join(build, 'requirements.yml')) as handle:
        assert yaml.safe_load(handle) == {'collections': [{'name': 'collections/' + tarball, 'type': 'file'}]}


def test_containerfile_installs_the_collection_from_the_tarball(context):
    with open(os.path.join(context, 'Containerfile')) as handle:
        text = handle.read()
    parts = stages(text)
    assert set(parts) >= {'base', 'galaxy', 'builder', 'final'}, list(parts)
    galaxy = '\n'.join(parts['galaxy'])
    # The context's _build (the tarball included) lands in /build, the galaxy stage's working folder ...
    assert 'COPY _build /build' in galaxy and 'WORKDIR /build' in galaxy
    install = [line for line in parts['galaxy'] if 'ansible-galaxy collection install' in line]
    assert len(install) == 1 and '-r requirements.yml' in install[0]
    assert '--collections-path "/usr/share/ansible/collections"' in install[0]
    # ... and the final image takes the installed collections and the system packages bindep.txt names.
    final = '\n'.join(parts['final'])
    assert 'COPY --from=galaxy /usr/share/ansible /usr/share/ansible' in final
    assert '/output/scripts/install-from-bindep' in final
    assert 'ARG EE_BASE_IMAGE="quay.io/centos/centos:stream9"' in text
    assert re.search(r'ARG ANSIBLE_INSTALL_REFS="ansible-core>=2\.19,<2\.20 ansible-runner>=2\.4"', text)


def build_env(tmp_path):
    """The environment of an image build: none of this checkout's Ansible settings (make exports ANSIBLE_CONFIG, whose
    collections_path links this tree: ansible-galaxy would find pggit.chaos "already installed" there and install
    nothing) and a HOME of its own."""
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith('ANSIBLE_'))
    home = tmp_path / 'home'
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), ANSIBLE_GALAXY_DISABLE_GPG_VERIFY='1')
    return env


def test_galaxy_stage_replayed_installs_this_collection(context, tmp_path):
    # The galaxy stage's command, run as the image build runs it (in a copy of _build), into a scratch path.
    build = tmp_path / 'build'
    shutil.copytree(os.path.join(context, '_build'), str(build))
    target = tmp_path / 'usr-share-ansible-collections'
    proc = subprocess.run([os.path.join(BIN, 'ansible-galaxy'), 'collection', 'install', '-r', 'requirements.yml',
                           '--collections-path', str(target)], cwd=str(build), capture_output=True, text=True,
                          env=build_env(tmp_path), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = target / 'ansible_collections' / 'pggit' / 'chaos'
    assert (root / 'playbooks' / 'chaos.yml').is_file() and (root / 'plugins' / 'filter' / 'chaos_summary.py').is_file()
    assert not (root / 'roles' / 'pggit_lab').exists()

    # The builder stage's introspection finds the collection's own meta/execution-environment.yml.
    out = tmp_path / 'src'
    proc = subprocess.run([sys.executable, os.path.join(str(build), 'scripts', 'introspect.py'), 'introspect', str(target),
                           '--user-pip=%s' % (build / 'requirements.txt'), '--user-bindep=%s' % (build / 'bindep.txt'),
                           '--write-pip=%s' % (out / 'requirements.txt'), '--write-bindep=%s' % (out / 'bindep.txt')],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pip = (out / 'requirements.txt').read_text()
    bindep = (out / 'bindep.txt').read_text()
    assert re.search(r'^psycopg2-binary>=2\.9\s+# from collection pggit\.chaos', pip, re.M), pip
    assert re.search(r'^netfilterqueue>=1\.1\s+# from collection pggit\.chaos', pip, re.M), pip
    # ansible-core is pinned the same wherever it is named (ANSIBLE_INSTALL_REFS, requirements.txt).
    assert set(re.findall(r'^ansible-core(\S*)', pip, re.M)) == {'>=2.19,<2.20'}, pip
    assert re.search(r'^stress-ng \[platform:rpm\]\s+# from collection pggit\.chaos', bindep, re.M), bindep


@pytest.mark.parametrize('profiles, wanted', [
    # The EE's platform (CentOS Stream, rpm): every tool the issue names, the PostgreSQL client included.
    (['default', 'platform:rpm', 'platform:centos'],
     {'iptables-nft', 'iproute', 'iproute-tc', 'stress-ng', 'libfaketime', 'libnetfilter_queue', 'postgresql', 'libpq'}),
    # Debian/Ubuntu.
    (['default', 'platform:dpkg', 'platform:debian'],
     {'iptables', 'iproute2', 'stress-ng', 'faketime', 'libnetfilter-queue1', 'postgresql-client', 'libpq5'}),
    # The builder stage also compiles netfilterqueue.
    (['default', 'compile', 'platform:rpm', 'platform:centos'], {'libnetfilter_queue-devel', 'gcc', 'python3-devel'}),
])
def test_bindep_names_the_tools_for_each_platform(profiles, wanted):
    with open(os.path.join(REPO, 'bindep.txt')) as handle:
        rules = Depends(handle.read()).active_rules(profiles)
    names = {rule[0] for rule in rules}
    assert wanted <= names, wanted - names
    # The lab's server packages never reach an EE.
    assert not {'postgresql-15', 'openssh-server'} & names


def test_the_builder_stage_gets_the_headers_of_the_ee_interpreter():
    """netfilterqueue (requirements.txt) has no wheel: the builder stage compiles it with the EE's interpreter
    (python_interpreter.package_system), so bindep's compile profile must bring that interpreter's -devel package,
    not only the platform's default python3-devel (3.9 on CentOS Stream 9, while the EE runs 3.11)."""
    with open(os.path.join(REPO, 'execution-environment.yml')) as handle:
        interpreter = yaml.safe_load(handle)['dependencies']['python_interpreter']['package_system']
    with open(os.path.join(REPO, 'bindep.txt')) as handle:
        rules = Depends(handle.read()).active_rules(['default', 'compile', 'platform:rpm', 'platform:centos'])
    assert '%s-devel' % interpreter in {rule[0] for rule in rules}
