"""The implementations of the `Broker` protocol (engine/broker.py): the simulator, Alpaca
over alpaca-py, and the sim-server that speaks Alpaca's API over the simulator so the
Alpaca adapter is tested end to end. The core imports none of them but through here."""
