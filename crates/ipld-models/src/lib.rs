//! Networks for IPLD: epsilon-networks for the latent DDPM prior and decoders g_phi.
//! Filled in by the training issue.
