"""callmeter: SIP load testing and VoIP call quality.

Packages: ``callmeter.v1`` (generated contracts), ``callmeter.common`` (what every service
shares), ``callmeter.state`` (the configuration and state schema), ``callmeter.cli`` (the
``callmeter`` command). The services live in the top-level ``services`` package.
"""

__version__ = "0.1.0"
