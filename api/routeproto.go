package api

// RouteProtocol marks every kernel route rhizome installs (the rtm_protocol
// field of a route), so the agent and the CNI plugin can list exactly their
// own routes and never touch anybody else's. 94 is named neither by the
// kernel (RTPROT_*), nor in iproute2's rt_protos, nor by the FRR package
// (186–197 in /etc/iproute2/rt_protos.d), nor used by Calico's BIRD (80).
const RouteProtocol = 94
