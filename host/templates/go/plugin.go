// {{name}}: a Runnel plugin. greet events are answered with greeted.
package main

import (
	"runnel.dev/runnel"
)

type greeting struct {
	Name *string `json:"name"`
}

type greeted struct {
	Hello string `json:"hello"`
}

type plugin struct{}

func (plugin) Handle(event *runnel.Event) error {
	if event.Name != "greet" {
		return nil // not ours: acknowledged without doing anything
	}
	var g greeting
	if err := event.DecodeJSON(&g); err != nil || g.Name == nil {
		return runnel.Reject(`a greet event needs a "name"`) // dead-letter now
	}
	runnel.Info("greeting " + *g.Name)
	// Published only if this call succeeds; an error (no route) is a retry.
	return runnel.EmitJSON("greeted", greeted{Hello: *g.Name})
}

// HandleError is told about every failed attempt; event is nil except on
// the last one, when the host gives up.
func (plugin) HandleError(failure runnel.Failure, event *runnel.Event) {
	if event != nil {
		runnel.Error("gave up on " + event.ID + ": " + failure.Message)
	}
}

func init() { runnel.Register(plugin{}) }

func main() {}
