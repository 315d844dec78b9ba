// Package export_wit_world is where the generated export glue
// (internal/wit/exports/wit_exports) calls the world's exported functions.
// It holds the plugin's handler, set by runnel.Register: the glue cannot
// import package runnel, which imports the glue.
package export_wit_world

import (
	witTypes "go.bytecodealliance.org/pkg/wit/types"
	types "runnel.dev/runnel/internal/wit/imports/runnel_plugin_types"
)

// OnHandle and OnHandleError are the plugin's, wrapped by package runnel.
var (
	OnHandle      func(types.Event) witTypes.Result[witTypes.Unit, types.Refusal]
	OnHandleError func(types.Failure, witTypes.Option[types.Event])
)

// Handle is the world's `handle` export. A plugin that never called
// runnel.Register traps here, with a message saying so.
func Handle(event types.Event) witTypes.Result[witTypes.Unit, types.Refusal] {
	if OnHandle == nil {
		panic("no handler: call runnel.Register from an init function")
	}
	return OnHandle(event)
}

// HandleError is the world's `handle-error` export.
func HandleError(failure types.Failure, event witTypes.Option[types.Event]) {
	if OnHandleError != nil {
		OnHandleError(failure, event)
	}
}
