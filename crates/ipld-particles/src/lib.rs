//! Particle clouds and their Langevin updates for IPLD (Algorithms 1 and 2 of Wang, Kuntz &
//! Akyildiz 2026). Filled in by the training issue.
