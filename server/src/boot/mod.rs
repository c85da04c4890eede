//! Network boot services for diskless load balancers: DHCP (PXE-aware) now; TFTP and HTTP boot follow.
//! Protocol logic here is sans-IO; socket loops wrap it.

pub mod dhcp;
