package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Error types of the OpenAI error object.
const (
	typeInvalidRequest = "invalid_request_error"
	typeAuthentication = "authentication_error"
	typeNotFound       = "not_found_error"
	typeRateLimit      = "rate_limit_error"
	typeServer         = "server_error"
	typeUnavailable    = "service_unavailable_error"
)

// APIError is an error answered to a client: an HTTP status and the OpenAI error object
// {"error": {"message", "type", "param", "code"}}.
type APIError struct {
	// Status is the HTTP status code.
	Status int
	// Type is the OpenAI error type (invalid_request_error, ...).
	Type string
	// Message says what is wrong, naming the field.
	Message string
	// Param is the request field at fault ("messages[0].content[1].image_embeds.shape"), or empty.
	Param string
	// Code is a machine-readable code (context_length_exceeded, queue_full, ...), or empty.
	Code string
	// RetryAfter, when positive, is sent as the Retry-After header (429 and 503).
	RetryAfter time.Duration
}

// Error implements error.
func (e *APIError) Error() string {
	if e.Param != "" {
		return fmt.Sprintf("%d %s (%s)", e.Status, e.Message, e.Param)
	}
	return fmt.Sprintf("%d %s", e.Status, e.Message)
}

// errorBody is the JSON of an error answer.
type errorBody struct {
	Error errorObject `json:"error"`
}

type errorObject struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

func (e *APIError) body() errorBody {
	o := errorObject{Message: e.Message, Type: e.Type}
	if e.Param != "" {
		o.Param = &e.Param
	}
	if e.Code != "" {
		o.Code = &e.Code
	}
	return errorBody{Error: o}
}

// write sends the error as the whole answer.
func (e *APIError) write(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if e.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int((e.RetryAfter+time.Second-1)/time.Second)))
	}
	w.WriteHeader(e.Status)
	_ = json.NewEncoder(w).Encode(e.body())
}

// badRequest is a 400 naming param.
func badRequest(param, format string, args ...any) *APIError {
	return &APIError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Param: param, Message: fmt.Sprintf(format, args...)}
}

// unprocessable is a 422: a well-formed value that the loaded model cannot take.
func unprocessable(param, format string, args ...any) *APIError {
	return &APIError{Status: http.StatusUnprocessableEntity, Type: typeInvalidRequest, Param: param, Message: fmt.Sprintf(format, args...)}
}

// notFound is a 404.
func notFound(param, code, format string, args ...any) *APIError {
	return &APIError{Status: http.StatusNotFound, Type: typeNotFound, Param: param, Code: code, Message: fmt.Sprintf(format, args...)}
}

// internalError is a 500; the details go to the log, not to the client.
func internalError(format string, args ...any) *APIError {
	return &APIError{Status: http.StatusInternalServerError, Type: typeServer, Message: fmt.Sprintf(format, args...)}
}
