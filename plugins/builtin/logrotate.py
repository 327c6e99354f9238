"""LogRotate (class ``system``): reopen the ``[logging] file`` after logrotate moved it.

The same as SIGHUP does for the log, without reloading the configuration;
Asterisk's own ``LoggerRotate`` rotates its files itself, ami-server leaves
the renaming to logrotate and only reopens.
"""

from ami_server import Action, Response, hookimpl


@hookimpl
def register_actions(server):
    def log_rotate(ctx):
        if not server.reopen_logs():
            return Response.error("Not logging to a file")
        return Response.success("Log file reopened")

    return [Action("LogRotate", log_rotate, "Reopen the ami-server log file (after logrotate).", "system")]
