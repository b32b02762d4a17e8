"""The metering core: the service terms as executable rules.

The core reads the usage event log (``mgwsim.events/1``), rates it against a tariff and
produces invoices (``mgwsim.invoice/1``) whose every line names the rule and article that
created it. It never imports the simulator.
"""

__all__: list[str] = []
