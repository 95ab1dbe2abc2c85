package function

import "sync"

// holderShare is the part of a function's bound on buffered bodies that
// one holder may take (see budget.take): a sixteenth, so that it takes
// sixteen holders sending bodies slowly, each as fast as its rate limit
// lets it start requests, to fill the bound (a quarter let four addresses
// keep every sign-in out).
const holderShare = 16

// budget bounds the bytes of request bodies buffered at once for one
// function's routes: in all, and per holder (the customer a credential
// names, else the client's address), so that one customer, or one address
// sending bodies slowly, cannot take the whole bound and keep every other
// client's requests out.
type budget struct {
	mu    sync.Mutex
	total int64
	parts int64 // a holder's share is total/parts
	used  int64
	by    map[string]int64
}

func newBudget(total int64) *budget { return newBudgetOf(total, holderShare) }

// newBudgetOf is a budget whose holders may each take total/parts.
func newBudgetOf(total, parts int64) *budget {
	return &budget{total: total, parts: parts, by: map[string]int64{}}
}

// take counts n more held by holder, unless they would pass holder's
// share (the total's part, a sixteenth for bodies, or floor if larger:
// what one body of the route needs) or the total. It says which refused.
func (b *budget) take(holder string, n, floor int64) budgetRefusal {
	b.mu.Lock()
	defer b.mu.Unlock()
	share := max(b.total/b.parts, floor)
	if b.by[holder]+n > share {
		return overShare
	}
	if b.used+n > b.total {
		return overTotal
	}
	b.used += n
	b.by[holder] += n
	return taken
}

// budgetRefusal is what budget.take says.
type budgetRefusal int

const (
	taken     budgetRefusal = iota
	overShare               // the holder's own share is used up: its own doing
	overTotal               // everyone's together
)

// give returns n bytes holder took.
func (b *budget) give(holder string, n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	if b.by[holder] -= n; b.by[holder] <= 0 {
		delete(b.by, holder)
	}
}
