package api

import (
	"fmt"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
)

// ParseSelector parses a node, namespace or peer selector.
//
// "" and "all()" select everything (labels.Everything()). Kubernetes
// label-selector syntax is accepted as labels.Parse accepts it:
//
//	rack=0    rack==0    rack!=0    rack in (0,1)    rack notin (0,1)    rack    !rack    gen>3
//
// and so are the Calico expression forms that existing pools and peers use:
//
//	all()    k == "v"    k == 'v'    k != "v"    has(k)    !has(k)
//	k in {"a","b"}    k not in {"a", 'b'}
//
// Terms are joined by && (or ","), with any white space (a no-break space
// pasted from a web page counts as one), and may be put in
// parentheses; ! before a single term negates it. A selector is a
// conjunction: "||" is refused, and so are the Calico operators that
// Kubernetes label requirements cannot express (contains, starts with,
// ends with, global(), the negation of a compound expression). Keys and
// values are checked as Kubernetes checks labels.
//
// The result's String() is the equivalent Kubernetes selector
// (`rack == "0"` gives "rack==0").
func ParseSelector(s string) (labels.Selector, error) {
	p := &selectorParser{src: s}
	if err := p.lex(); err != nil {
		return nil, err
	}
	for _, t := range p.toks {
		if t.kind == tokOr {
			return nil, p.errorf(t.pos, `"||" is not supported: rhizome selectors are conjunctions (terms joined by &&); `+
				`to accept several values of one label use k in {"a","b"}, otherwise write separate resources`)
		}
	}
	if p.peek().kind == tokEOF {
		return labels.Everything(), nil
	}
	reqs, err := p.conjunction(0)
	if err != nil {
		return nil, err
	}
	if t := p.peek(); t.kind != tokEOF {
		return nil, p.errorf(t.pos, "unexpected %s: expected && or the end of the selector", t)
	}
	if len(reqs) == 0 {
		return labels.Everything(), nil
	}
	return labels.NewSelector().Add(reqs...), nil
}

// nbsp is U+00A0, a no-break space, read as white space.
const nbsp = "\u00a0"

// maxSelectorDepth bounds nesting of parentheses and negations.
const maxSelectorDepth = 32

type tokKind int

const (
	tokEOF    tokKind = iota
	tokWord           // a key, a value or a keyword: rack, 0, in, has
	tokString         // "v" or 'v'; text is what is between the quotes
	tokAnd            // && or ,
	tokOr             // ||
	tokLParen
	tokRParen
	tokLBrace
	tokRBrace
	tokNot   // !
	tokEq    // =
	tokEqEq  // ==
	tokNotEq // !=
	tokGt    // >
	tokLt    // <
)

type selToken struct {
	kind tokKind
	text string // the source text, or a string's content
	pos  int    // byte offset in the selector
}

func (t selToken) String() string {
	switch t.kind {
	case tokEOF:
		return "end of selector"
	case tokWord:
		return fmt.Sprintf("%q", t.text)
	case tokString:
		return fmt.Sprintf("string %q", t.text)
	}
	return fmt.Sprintf("%q", t.text)
}

type selectorParser struct {
	src  string
	toks []selToken
	i    int
}

func (p *selectorParser) errorf(pos int, format string, args ...any) error {
	return fmt.Errorf("invalid selector %q: column %d: %s", p.src, pos+1, fmt.Sprintf(format, args...))
}

func isSelectorSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'
}

// isSelectorSpecial reports the bytes that end a word.
func isSelectorSpecial(c byte) bool {
	return strings.IndexByte(`=!(),<>{}&|"'`, c) >= 0
}

func (p *selectorParser) lex() error {
	s := p.src
	for i := 0; i < len(s); {
		c := s[i]
		if isSelectorSpace(c) {
			i++
			continue
		}
		if strings.HasPrefix(s[i:], nbsp) { // pasted from a web page
			i += len(nbsp)
			continue
		}
		two := ""
		if i+1 < len(s) {
			two = s[i : i+2]
		}
		emit := func(k tokKind, n int) {
			p.toks = append(p.toks, selToken{kind: k, text: s[i : i+n], pos: i})
			i += n
		}
		switch {
		case two == "&&":
			emit(tokAnd, 2)
		case two == "||":
			emit(tokOr, 2)
		case two == "==":
			emit(tokEqEq, 2)
		case two == "!=":
			emit(tokNotEq, 2)
		case c == '&' || c == '|':
			return p.errorf(i, "%q is not an operator: join terms with &&", string(c))
		case c == ',':
			emit(tokAnd, 1)
		case c == '(':
			emit(tokLParen, 1)
		case c == ')':
			emit(tokRParen, 1)
		case c == '{':
			emit(tokLBrace, 1)
		case c == '}':
			emit(tokRBrace, 1)
		case c == '!':
			emit(tokNot, 1)
		case c == '=':
			emit(tokEq, 1)
		case c == '>':
			emit(tokGt, 1)
		case c == '<':
			emit(tokLt, 1)
		case c == '"' || c == '\'':
			end := strings.IndexByte(s[i+1:], c)
			if end < 0 {
				return p.errorf(i, "string starting here has no closing %c", c)
			}
			p.toks = append(p.toks, selToken{kind: tokString, text: s[i+1 : i+1+end], pos: i})
			i += end + 2
		default:
			j := i
			for j < len(s) && !isSelectorSpace(s[j]) && !isSelectorSpecial(s[j]) && !strings.HasPrefix(s[j:], nbsp) {
				j++
			}
			emit(tokWord, j-i)
		}
	}
	p.toks = append(p.toks, selToken{kind: tokEOF, pos: len(s)})
	return nil
}

func (p *selectorParser) peek() selToken { return p.toks[p.i] }

// peekN looks n tokens ahead (0 = peek), stopping at the end.
func (p *selectorParser) peekN(n int) selToken {
	if p.i+n >= len(p.toks) {
		return p.toks[len(p.toks)-1]
	}
	return p.toks[p.i+n]
}

func (p *selectorParser) next() selToken {
	t := p.toks[p.i]
	if t.kind != tokEOF {
		p.i++
	}
	return t
}

// conjunction parses terms joined by && or ",", up to ")" or the end.
func (p *selectorParser) conjunction(depth int) ([]labels.Requirement, error) {
	var reqs []labels.Requirement
	for {
		r, err := p.unary(depth)
		if err != nil {
			return nil, err
		}
		reqs = append(reqs, r...)
		if p.peek().kind != tokAnd {
			return reqs, nil
		}
		p.next()
	}
}

// unary parses a term, possibly negated.
func (p *selectorParser) unary(depth int) ([]labels.Requirement, error) {
	if depth > maxSelectorDepth {
		return nil, p.errorf(p.peek().pos, "nested too deeply")
	}
	if p.peek().kind != tokNot {
		return p.primary(depth)
	}
	bang := p.next()
	if t := p.peek(); t.kind == tokWord && !isFunction(p, "has", "all", "global") && !isOperatorAhead(p.peekN(1)) {
		// Kubernetes "!k": the key must not exist.
		p.next()
		r, err := p.requirement(t, selection.DoesNotExist, nil)
		if err != nil {
			return nil, err
		}
		return []labels.Requirement{r}, nil
	}
	inner, err := p.unary(depth + 1)
	if err != nil {
		return nil, err
	}
	switch len(inner) {
	case 0:
		return nil, p.errorf(bang.pos, "!all() selects nothing: remove the resource or the selector instead")
	case 1:
	default:
		return nil, p.errorf(bang.pos, "!(...) of a compound expression is not supported: !(a && b) means !a || !b, "+
			"and rhizome selectors are conjunctions; negate single terms, like !has(k) or k != \"v\"")
	}
	neg, ok := negate(inner[0].Operator())
	if !ok {
		return nil, p.errorf(bang.pos, "cannot negate %s: use the opposite comparison", inner[0].String())
	}
	r, err := labels.NewRequirement(inner[0].Key(), neg, inner[0].ValuesUnsorted())
	if err != nil {
		return nil, p.errorf(bang.pos, "%v", err)
	}
	return []labels.Requirement{*r}, nil
}

// isFunction reports whether the next tokens are one of names followed by "(".
func isFunction(p *selectorParser, names ...string) bool {
	t := p.peek()
	if t.kind != tokWord || p.peekN(1).kind != tokLParen {
		return false
	}
	for _, n := range names {
		if t.text == n {
			return true
		}
	}
	return false
}

// isOperatorAhead reports whether t starts a comparison after a key.
func isOperatorAhead(t selToken) bool {
	switch t.kind {
	case tokEq, tokEqEq, tokNotEq, tokGt, tokLt:
		return true
	case tokWord:
		switch t.text {
		case "in", "notin", "not", "contains", "starts", "ends":
			return true
		}
	}
	return false
}

func negate(op selection.Operator) (selection.Operator, bool) {
	switch op {
	case selection.Exists:
		return selection.DoesNotExist, true
	case selection.DoesNotExist:
		return selection.Exists, true
	case selection.Equals, selection.DoubleEquals:
		return selection.NotEquals, true
	case selection.NotEquals:
		return selection.DoubleEquals, true
	case selection.In:
		return selection.NotIn, true
	case selection.NotIn:
		return selection.In, true
	}
	return "", false
}

// primary parses a parenthesised conjunction, all(), has(k), or a
// comparison starting with a key.
func (p *selectorParser) primary(depth int) ([]labels.Requirement, error) {
	t := p.peek()
	switch t.kind {
	case tokLParen:
		p.next()
		reqs, err := p.conjunction(depth + 1)
		if err != nil {
			return nil, err
		}
		if c := p.next(); c.kind != tokRParen {
			return nil, p.errorf(c.pos, "expected ) to close the ( at column %d, found %s", t.pos+1, c)
		}
		return reqs, nil
	case tokWord:
	default:
		return nil, p.errorf(t.pos, "expected a label key, has(k) or all(), found %s", t)
	}
	if p.peekN(1).kind == tokLParen {
		return p.function()
	}
	key := p.next()
	op := p.peek()
	switch {
	case op.kind == tokEq || op.kind == tokEqEq || op.kind == tokNotEq || op.kind == tokGt || op.kind == tokLt:
		p.next()
		v, err := p.exactValue(op)
		if err != nil {
			return nil, err
		}
		return p.one(key, map[tokKind]selection.Operator{
			tokEq: selection.Equals, tokEqEq: selection.DoubleEquals, tokNotEq: selection.NotEquals,
			tokGt: selection.GreaterThan, tokLt: selection.LessThan,
		}[op.kind], []string{v})
	case op.kind == tokWord && (op.text == "in" || op.text == "notin"):
		p.next()
		vals, err := p.valueSet(op)
		if err != nil {
			return nil, err
		}
		if op.text == "in" {
			return p.one(key, selection.In, vals)
		}
		return p.one(key, selection.NotIn, vals)
	case op.kind == tokWord && op.text == "not":
		p.next()
		if in := p.next(); in.kind != tokWord || in.text != "in" {
			return nil, p.errorf(in.pos, `expected "in" after "not", found %s`, in)
		}
		vals, err := p.valueSet(op)
		if err != nil {
			return nil, err
		}
		return p.one(key, selection.NotIn, vals)
	case op.kind == tokWord && (op.text == "contains" || op.text == "starts" || op.text == "ends"):
		name := op.text
		if name != "contains" {
			name += " with"
		}
		return nil, p.errorf(op.pos, "the Calico operator %q is not supported: Kubernetes label requirements "+
			"match whole values; list the values with k in {\"a\",\"b\"}", name)
	case op.kind == tokEOF || op.kind == tokAnd || op.kind == tokRParen:
		return p.one(key, selection.Exists, nil)
	}
	return nil, p.errorf(op.pos, "expected an operator (==, !=, in, not in, ...), &&, or the end after key %q, found %s", key.text, op)
}

// function parses all(), has(k) and refuses the other Calico functions.
func (p *selectorParser) function() ([]labels.Requirement, error) {
	name := p.next()
	p.next() // (
	switch name.text {
	case "all":
		if c := p.next(); c.kind != tokRParen {
			return nil, p.errorf(c.pos, "all() takes no argument, found %s", c)
		}
		return nil, nil
	case "has":
		key := p.next()
		if key.kind != tokWord && key.kind != tokString {
			return nil, p.errorf(key.pos, "has() takes a label key, found %s", key)
		}
		if c := p.next(); c.kind != tokRParen {
			return nil, p.errorf(c.pos, "expected ) after has(%s, found %s", key.text, c)
		}
		return p.one(key, selection.Exists, nil)
	case "global":
		return nil, p.errorf(name.pos, "the Calico function global() is not supported: rhizome selectors match the labels of nodes and namespaces only")
	}
	return nil, p.errorf(name.pos, "unknown function %s(): rhizome selectors know all() and has(k)", name.text)
}

// exactValue reads the value after ==, =, != , > or <. Like labels.Parse,
// a missing value (end, && or ")") is the empty string.
func (p *selectorParser) exactValue(op selToken) (string, error) {
	switch t := p.peek(); t.kind {
	case tokWord, tokString:
		p.next()
		return t.text, nil
	case tokEOF, tokAnd, tokRParen:
		return "", nil
	default:
		return "", p.errorf(t.pos, "expected a value after %s, found %s", op.text, t)
	}
}

// valueSet reads (a,b) or {"a","b"}. Like labels.Parse, empty entries are
// the empty string and "()" is the set of the empty string; "{}" is refused.
func (p *selectorParser) valueSet(op selToken) ([]string, error) {
	open := p.next()
	var closeKind tokKind
	switch open.kind {
	case tokLParen:
		closeKind = tokRParen
	case tokLBrace:
		closeKind = tokRBrace
		if p.peek().kind == tokRBrace {
			return nil, p.errorf(open.pos, "empty set {} after %s: list at least one value", op.text)
		}
	default:
		return nil, p.errorf(open.pos, `expected a set of values after %s, like ("a","b") or {"a","b"}, found %s`, op.text, open)
	}
	set := make(map[string]bool)
	wantValue := true
	for {
		t := p.next()
		switch {
		case t.kind == closeKind:
			if wantValue {
				set[""] = true
			}
			vals := make([]string, 0, len(set))
			for v := range set {
				vals = append(vals, v)
			}
			sort.Strings(vals)
			return vals, nil
		case t.kind == tokAnd && t.text == ",":
			if wantValue {
				set[""] = true
			}
			wantValue = true
		case (t.kind == tokWord || t.kind == tokString) && wantValue:
			set[t.text] = true
			wantValue = false
		default:
			closer := ")"
			if closeKind == tokRBrace {
				closer = "}"
			}
			return nil, p.errorf(t.pos, "expected a value, \",\" or %q in the set opened at column %d, found %s", closer, open.pos+1, t)
		}
	}
}

// one builds a single requirement, checking key and values like Kubernetes.
func (p *selectorParser) one(key selToken, op selection.Operator, vals []string) ([]labels.Requirement, error) {
	r, err := p.requirement(key, op, vals)
	if err != nil {
		return nil, err
	}
	return []labels.Requirement{r}, nil
}

func (p *selectorParser) requirement(key selToken, op selection.Operator, vals []string) (labels.Requirement, error) {
	if vals == nil {
		vals = []string{}
	}
	r, err := labels.NewRequirement(key.text, op, vals)
	if err != nil {
		return labels.Requirement{}, p.errorf(key.pos, "%v", err)
	}
	return *r, nil
}
