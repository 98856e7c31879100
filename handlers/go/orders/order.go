package export_wit_world

import (
	"encoding/json"
	"errors"
	"fmt"
)

// order is what the handler uses of an order. Other fields are allowed and ignored.
type order struct {
	ID            string
	Customer      string
	Items         int // how many; the items themselves are not inspected
	Total         float64
	InventoryBusy bool // inventory cannot take the order now: retry later
	Crash         bool // fail on purpose, to show what the host does with a trap
}

// parseOrder parses and validates an order. The error is the reason to reject it: it starts
// with "invalid JSON" or "invalid order", and names the field at fault.
func parseOrder(payload []byte) (order, error) {
	// Decoding to raw fields first tells a missing field from one of the wrong type.
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(payload, &fields); err != nil {
		var syntax *json.SyntaxError
		if errors.As(err, &syntax) {
			return order{}, fmt.Errorf("invalid JSON: %w", err)
		}
		return order{}, errors.New("invalid order: expected a JSON object")
	}
	if fields == nil { // the payload was `null`
		return order{}, errors.New("invalid order: expected a JSON object")
	}

	var o order
	var items []json.RawMessage
	for _, f := range []struct {
		name, kind string
		required   bool
		into       any
	}{
		{"id", "a string", true, &o.ID},
		{"customer", "a string", true, &o.Customer},
		{"items", "an array", true, &items},
		{"total", "a number", true, &o.Total},
		{"inventory_busy", "a boolean", false, &o.InventoryBusy},
		{"crash", "a boolean", false, &o.Crash},
	} {
		raw, found := fields[f.name]
		switch {
		case !found && f.required:
			return order{}, fmt.Errorf("invalid order: missing field %s", f.name)
		case !found:
			continue
		// json.Unmarshal accepts null for any type, leaving the value alone: reject it here.
		case string(raw) == "null" || json.Unmarshal(raw, f.into) != nil:
			return order{}, fmt.Errorf("invalid order: field %s must be %s", f.name, f.kind)
		}
	}
	if len(items) == 0 {
		return order{}, errors.New("invalid order: no items")
	}
	o.Items = len(items)
	return o, nil
}
