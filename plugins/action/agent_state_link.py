# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Action plugin of agor.persistence.agent_state_link: where the module would run on the controller
itself, as the controller's own user (the local connection of a container start step, without become
or async), the engine runs in this worker process instead of a module process, with the module's
argument spec and the module's result. Elsewhere the module runs as usual."""

from __future__ import annotations

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.errors import UnsupportedError
from ansible.plugins.action import ActionBase
from ansible.plugins.action.normal import ActionModule as NormalAction

from ansible_collections.agor.persistence.plugins.module_utils._engine import run_reporting_refusal
from ansible_collections.agor.persistence.plugins.module_utils._spec import argument_spec


class ActionModule(NormalAction):
    """ansible.builtin.normal (how any module runs, async included), except where the engine can run here."""

    def run(self, tmp=None, task_vars=None):
        if not self._runs_as_controller():
            return super().run(tmp, task_vars)
        result = ActionBase.run(self, tmp, task_vars)  # the checks every action makes (check mode, async), not normal's module run
        validation = ArgumentSpecValidator(argument_spec()).validate(self._task.args)
        if validation.error_messages:
            error = validation.errors[0]
            prefix = f"Unsupported parameters for ({self._task.resolved_action}) module: " if isinstance(error, UnsupportedError) else ""
            result.update(failed=True, msg=prefix + validation.errors.msg)
            return result
        params = validation.validated_parameters
        result.update(run_reporting_refusal(params, check_mode=self._task.check_mode))
        result["invocation"] = {"module_args": params}
        return result

    def _runs_as_controller(self):
        """The module would run here, as this process's user: no other host, no become, no async job."""
        return self._connection.transport == "local" and not self._play_context.become and not self._task.async_val
