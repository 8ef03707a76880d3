// Package crdtest holds the tests of rhizome's CustomResourceDefinitions
// (manifests/crds): that their schemas list exactly the fields of api's Go
// types, and that a real kube-apiserver serves them, prints the columns
// rhizomectl prints and refuses bad objects with the field named.
//
// It has no code of its own outside tests.
package crdtest
