"""Training and scoring take turns on the device: the memory estimate per phase (``estimate``) and the policy that
moves models at each phase boundary (``policy``), chosen by ``evaluation.residency``."""
