package cnisvc_test

import (
	"github.com/rhizome-net/rhizome/daemon/cnisvc/agenttest"
	"github.com/rhizome-net/rhizome/datastore"
)

func datastoreResources(ag *agenttest.Agent) *datastore.Resources {
	return datastore.NewResources(ag.Store)
}
