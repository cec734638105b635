"""The AWX job template and survey in extensions/awx match chaos.yml: every question sets a variable chaos.yml reads,
every experiment offered is one chaos.yml knows (derived from chaos.yml, never listed here), and the spec is one the
AWX API accepts."""
from __future__ import annotations

import json
import os
import re

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
AWX = os.path.join(REPO, 'extensions', 'awx')
# The question types the AWX API takes (awx/api/views: JobTemplateSurveySpec).
TYPES = ('text', 'textarea', 'password', 'integer', 'float', 'multiplechoice', 'multiselect')


def load_survey():
    with open(os.path.join(AWX, 'survey_spec.json')) as handle:
        return json.load(handle)


def chaos_plays():
    with open(os.path.join(REPO, 'playbooks', 'chaos.yml')) as handle:
        return yaml.safe_load(handle)


def known_experiments(plays):
    """Every experiment chaos.yml accepts: the pggit_chaos_known_experiments of its plays."""
    known = []
    for play in plays:
        for name in (play.get('vars') or {}).get('pggit_chaos_known_experiments') or []:
            if name not in known:
                known.append(name)
    return known


# Keys whose values Ansible evaluates as bare Jinja expressions (no braces).
EXPRESSION_KEYS = ('when', 'that', 'changed_when', 'failed_when', 'until')
JINJA = re.compile(r'{{(.*?)}}|{%(.*?)%}', re.S)


def strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def expressions(node, bare=False):
    """The Jinja that Ansible evaluates in ``node``: what is inside {{ }} / {% %}, and the whole of a when/that/...
    value. Prose (task names, fail_msg text outside braces) is not read by anything."""
    if isinstance(node, str):
        if bare:
            yield node
        for match in JINJA.finditer(node):
            yield match.group(1) or match.group(2) or ''
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from expressions(value, bare=str(key) in EXPRESSION_KEYS)
    elif isinstance(node, list):
        for value in node:
            yield from expressions(value, bare=bare)


def variables_read(plays):
    """The chaos_* names chaos.yml's templates, conditions and play patterns really evaluate (comments and prose
    are not)."""
    names = set()
    for text in expressions(plays):
        names.update(re.findall(r'\b(chaos_[a-z0-9_]+)\b', text))
    return names


def choices(question):
    value = question.get('choices') or []
    return [c for c in value.splitlines() if c.strip()] if isinstance(value, str) else list(value)


def question(survey, variable):
    return next(q for q in survey['spec'] if q['variable'] == variable)


def test_the_checks_below_can_see_what_they_look_for():
    plays = chaos_plays()
    assert {'trigger_failure', 'kill_connections', 'clock_skew'} <= set(known_experiments(plays))
    assert {'chaos_experiments', 'chaos_duration', 'chaos_ttl', 'chaos_max_hosts', 'chaos_targets'} <= variables_read(plays)
    assert 'chaos_no_such_thing' not in variables_read(plays)
    # A name only in prose (a task name, a message outside braces) is not read.
    prose = [{'name': 'use chaos_in_name', 'tasks': [{'name': 'x chaos_in_task_name', 'ansible.builtin.assert': {
        'that': 'chaos_in_that | bool', 'fail_msg': 'chaos_in_prose must be set, got {{ chaos_in_braces }}'}}]}]
    assert variables_read(prose) == {'chaos_in_that', 'chaos_in_braces'}


def test_every_survey_variable_is_read_by_chaos_yml():
    read = variables_read(chaos_plays())
    unknown = [q['variable'] for q in load_survey()['spec'] if q['variable'] not in read]
    assert unknown == [], 'survey variables chaos.yml never reads: %s' % unknown


def test_the_issue_asks_for_these_questions():
    variables = [q['variable'] for q in load_survey()['spec']]
    for wanted in ('chaos_experiments', 'chaos_duration', 'chaos_ttl', 'chaos_max_hosts', 'chaos_targets'):
        assert wanted in variables


def test_every_experiment_choice_is_real_and_every_real_one_is_offered():
    known = known_experiments(chaos_plays())
    offered = choices(question(load_survey(), 'chaos_experiments'))
    assert [c for c in offered if c not in known] == [], 'survey offers experiments chaos.yml does not know'
    missing = [k for k in known if k not in offered]
    assert missing == [], ('chaos.yml knows experiments the survey does not offer: %s; add them to the choices of '
                           'chaos_experiments in extensions/awx/survey_spec.json' % missing)
    assert len(set(offered)) == len(offered)


def test_the_spec_is_one_the_awx_api_takes():
    survey = load_survey()
    assert set(survey) == {'name', 'description', 'spec'} and survey['name']
    variables = [q['variable'] for q in survey['spec']]
    assert len(set(variables)) == len(variables)
    for q in survey['spec']:
        assert q['type'] in TYPES, q
        assert q['question_name'] and isinstance(q['required'], bool), q
        assert re.match(r'^[a-zA-Z_][a-zA-Z0-9_]*$', q['variable']), q
        if q['type'] in ('multiplechoice', 'multiselect'):
            offered = choices(q)
            assert offered, q
            defaults = [d for d in str(q.get('default', '')).split('\n') if d] if q['type'] == 'multiselect' \
                else [q['default']]
            assert set(defaults) <= set(offered), q
        if q['type'] == 'integer':
            assert isinstance(q['min'], int) and isinstance(q['max'], int) and q['min'] <= q['default'] <= q['max'], q
        if q['type'] == 'text':
            assert q['min'] <= len(q['default']) <= q['max'], q


def test_defaults_pass_chaos_yml_checks():
    survey = load_survey()
    # chaos.yml: a positive window, a whole-number TTL that outlives the window.
    assert question(survey, 'chaos_duration')['min'] > 0
    assert question(survey, 'chaos_ttl')['default'] > question(survey, 'chaos_duration')['default']
    assert re.match(r'^([0-9]+%?|all)$', question(survey, 'chaos_max_hosts')['default'])
    assert set(choices(question(survey, 'chaos_fail_on_failure'))) == {'true', 'false'}


def test_job_template_runs_the_project_playbook_that_imports_the_collection():
    with open(os.path.join(AWX, 'job_template.yml')) as handle:
        template = yaml.safe_load(handle)
    assert template['survey_enabled'] is True and template['job_type'] == 'run'
    assert template['job_slice_count'] == 1 and template['allow_simultaneous'] is False
    with open(os.path.join(AWX, template['playbook'])) as handle:
        project_playbook = yaml.safe_load(handle)
    assert project_playbook == [{'name': 'Run the pgGit chaos experiments', 'ansible.builtin.import_playbook': 'pggit.chaos.chaos'}]
    extra = set(template.get('extra_vars') or {})
    assert extra <= variables_read(chaos_plays()), extra


@pytest.mark.parametrize('play_index', [-1])
def test_the_last_play_publishes_the_summary(play_index):
    play = chaos_plays()[play_index]
    # localhost, plus (all:localhost, run_once) the hosts a launch-time limit keeps: tests/integration/test_summary_play.py
    assert 'localhost' in str(play['hosts'])
    stats = [t for t in play['tasks'] if 'ansible.builtin.set_stats' in t]
    assert len(stats) == 1
    assert set(stats[0]['ansible.builtin.set_stats']['data']) == {'pggit_chaos_summary'}
    assert stats[0]['ansible.builtin.set_stats']['aggregate'] is True
    assert any('pggit.chaos.chaos_summary' in text for text in strings(play['tasks']))


def test_the_project_enables_the_report_callback_and_leaves_the_report_dir_to_the_runner():
    """AWX runs the job from the project's root: the project's ansible.cfg must enable pggit.chaos.chaos_report, or a
    job writes no report at all; and it must not set report_dir, which would override the artifact-dir default."""
    import configparser
    config = configparser.ConfigParser()
    assert config.read(os.path.join(AWX, 'ansible.cfg')), 'extensions/awx/ansible.cfg is missing'
    enabled = [c.strip() for c in config.get('defaults', 'callbacks_enabled', fallback='').split(',')]
    assert 'pggit.chaos.chaos_report' in enabled
    assert not config.has_option('pggit_chaos', 'report_dir')  # False too when the section is absent


def run_each_experiment_loop(**answers):
    """chaos.yml's "Run each experiment" loop, rendered with the survey's answers (plain Jinja: the filters it uses are
    Jinja's own)."""
    import jinja2  # pylint: disable=import-outside-toplevel
    plays = chaos_plays()
    task = [t for p in plays for t in p.get('tasks') or [] if t.get('name') == 'Run each experiment'][0]
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return env.from_string(task['loop']).render(pggit_chaos_experiments=['network_latency'], **answers).strip()


@pytest.mark.parametrize('variable', ['chaos_ramp', 'chaos_compose'])
def test_ramp_and_compose_are_optional_and_an_empty_answer_runs_the_plain_experiments(variable):
    q = question(load_survey(), variable)
    assert q['type'] == 'text' and q['required'] is False and q['default'] == '' and q['min'] == 0
    # AWX sends an unanswered optional text question as an empty string (or leaves it out).
    assert run_each_experiment_loop(**{variable: ''}) == "['network_latency']"
    assert run_each_experiment_loop() == "['network_latency']"
    answer = '{"param": "chaos_latency_ms", "from": 10, "to": 40, "factor": 2}' if variable == 'chaos_ramp' \
        else 'network_latency,kill_connections'
    assert run_each_experiment_loop(**{variable: answer}) == "['%s']" % variable.split('_')[1]
