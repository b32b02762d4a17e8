"""The SimPy engine, JST clock, scenarios, runners, the ``mgwsim`` CLI and reports."""
