"""``dmcs replay``: a simulated (or OpSim) night through the whole running system."""
