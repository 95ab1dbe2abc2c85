package audit

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/glassmkr/guardian/shared/audit"
)

// sameAnnotation checks decodeAnnotation against encoding/json: the same
// verdict, and on success the same annotation.
func sameAnnotation(t *testing.T, ann string) {
	t.Helper()
	var got, want audit.Annotation
	gotErr := decodeAnnotation(ann, &got)
	wantErr := json.Unmarshal([]byte(ann), &want)
	if (gotErr == nil) != (wantErr == nil) {
		t.Fatalf("%q: error %v, encoding/json says %v", ann, gotErr, wantErr)
	}
	if gotErr == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("%q: %#v, encoding/json says %#v", ann, got, want)
	}
}

func TestDecodeAnnotationAgreesWithEncodingJSON(t *testing.T) {
	for _, ann := range []string{
		audit.Annotation{ResourceType: "snapshot", ResourceID: "s", Action: "create", Metadata: map[string]any{"bytes": 4012, "collector_version": "0.9.3"}}.Encode(),
		`null`, `{}`, `[]`, `"x"`, `{"metadata":null}`, `{"metadata":[1]}`, `{"action":7}`,
		`{"metadata":{"a":1},"metadata":{"b":2}}`,                     // encoding/json merges into the map
		`{"Resource_Type":"k","RESOURCE_ID":"ſ","reſource_type":"x"}`, // names fold
		`{"action":"a","action":null}`,                                // null leaves a string as it was
		`{"metadata":{"n":1e400}}`, `{"metadata":{"n":-0,"f":1.5e-7,"i":12345678901234567890}}`,
		`{"metadata":{"s":"\ud800\u00e9\xff","k\u0000":{"x":[true,null,{"y":"z"}]},"k":1,"k":2}}`,
		`{"customer_id":"c","user_id":"u"} `, `{"a":1}x`, `{"a":1,}`, `{"metadata":{"a":01}}`,
	} {
		sameAnnotation(t, ann)
	}
}

// FuzzDecodeAnnotation: functions write annotations, but the edge reads
// them as untrusted input, and each becomes part of a hashed audit row.
func FuzzDecodeAnnotation(f *testing.F) {
	f.Add(`{"resource_type":"api_key","resource_id":"k","action":"rotate","metadata":{"scope":"write","n":1.5}}`)
	f.Add(`{"metadata":{"a":{"b":[1,"2",null,true]}},"Metadata":{"c":-1e-3}}`)
	f.Add(`{"customer_id":"\u00e9","user_id":null}`)
	f.Fuzz(func(t *testing.T, ann string) { sameAnnotation(t, ann) })
}
