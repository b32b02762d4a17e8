"""The shipped scenarios, installed with mgwsim as package data (``mgwsim run quickstart`` anywhere).

Not code: this file makes the folder a package, so that ``pip install`` carries its TOML files,
their golden invoices and the dispute cases (see ``simulator.shipped``).
"""
