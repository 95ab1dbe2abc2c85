// Package reply writes the JSON answers of functions. Answers are never
// cached: every one describes a customer's own data at one moment.
package reply

import (
	"encoding/json"
	"net/http"
)

// JSON writes v as the response with status.
func JSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
